//! The pages: the pending list, a proposal with what approving changes and
//! its forms, the audit records, and the notices. Everything an agent wrote
//! (message, descriptions, names) goes through `html::text`. A typed value
//! is never put back into a page: after an error the form comes back empty.

use std::fmt::Write;
use std::sync::Arc;

use agent_vault_core::secrecy::SecretBox;
use hyper::StatusCode;

use super::form::Form;
use super::html::{self, esc, text};
use super::server::{Answer, App, html_page, redirect};
use super::session::Authed;
use super::store::{self, Owner, Plan};

/// Runs a blocking vault call on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    owner: &Arc<Owner>,
    f: impl FnOnce(&Owner) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let owner = owner.clone();
    tokio::task::spawn_blocking(move || f(&owner))
        .await
        .unwrap_or_else(|_| Err("the vault operation stopped unexpectedly".into()))
}

/// 401: no session.
pub(crate) fn login_needed() -> Answer {
    html_page(
        StatusCode::UNAUTHORIZED,
        html::notice(
            "Log in",
            "Open the login URL that <code>agent-vault ui</code> printed in your terminal. \
             It works once; to log in again, start <code>agent-vault ui</code> again.",
            None,
        ),
    )
}

/// 403: a wrong or used login token.
pub(crate) fn login_failed() -> Answer {
    html_page(
        StatusCode::FORBIDDEN,
        html::notice(
            "Login link not valid",
            "This login link is wrong or was already used (each works once). \
             Start <code>agent-vault ui</code> again for a new one.",
            None,
        ),
    )
}

/// 403: a form refused (CSRF, origin).
pub(crate) fn refused(why: &str) -> Answer {
    html_page(
        StatusCode::FORBIDDEN,
        html::notice("Refused", &esc(why), None),
    )
}

/// 404.
pub(crate) fn not_found(authed: &Authed) -> Answer {
    html_page(
        StatusCode::NOT_FOUND,
        html::notice(
            "Not found",
            "No such page. <a href=\"/\">Back to the proposals</a>.",
            Some(&authed.csrf),
        ),
    )
}

/// `GET /`: the pending proposals.
pub(crate) async fn list(app: &App, authed: &Authed) -> Answer {
    let now = jiff::Timestamp::now();
    let mut body = String::from("<h1>Pending proposals</h1>");
    match blocking(&app.owner, store::pending).await {
        Err(e) => {
            let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", text(&e));
        }
        Ok(list) if list.is_empty() => {
            body.push_str("<p>No proposal is waiting. Agents propose with <code>agent-vault propose</code> or their MCP tool; <code>agent-vault sync</code> brings theirs.</p>");
        }
        Ok(list) => {
            body.push_str(
                "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Proposal</th>\
                 <th scope=\"col\">Agent</th><th scope=\"col\">Message</th>\
                 <th scope=\"col\">Age</th><th scope=\"col\">Expires</th></tr></thead><tbody>",
            );
            for p in list {
                let _ = write!(
                    body,
                    "<tr><td><a href=\"/p/{id}\"><code>{id}</code></a></td><td>{agent}</td>\
                     <td>{msg}</td><td>{age}</td><td>{exp}</td></tr>",
                    id = esc(&p.id),
                    agent = text(&p.agent),
                    msg = text(&p.first_line),
                    age = html::age(p.created, now),
                    exp = esc(&p.expires.strftime("%Y-%m-%d %H:%M UTC").to_string()),
                );
            }
            body.push_str("</tbody></table></div>");
        }
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/sync\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"sync\">Sync with the remote</button> \
         <span class=\"muted\">fetches the agents' proposals, pushes your decisions</span></form>",
        esc(&authed.csrf)
    );
    html_page(
        StatusCode::OK,
        html::page(
            "Proposals",
            Some(&authed.csrf),
            authed.flash.as_deref(),
            &body,
        ),
    )
}

/// `GET /p/ID`: what approving changes, and the forms. `error` (a message
/// of ours, never a value) is shown above an empty form.
pub(crate) async fn proposal(
    app: &App,
    authed: &Authed,
    id: &str,
    error: Option<String>,
) -> Answer {
    let id_owned = id.to_owned();
    let plan = match blocking(&app.owner, move |o| store::plan(o, &id_owned)).await {
        Ok(p) => p,
        Err(e) => {
            return html_page(
                StatusCode::NOT_FOUND,
                html::page(
                    "Proposal",
                    Some(&authed.csrf),
                    None,
                    &format!(
                        "<h1>Proposal</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Back to the proposals</a></p>",
                        text(&e)
                    ),
                ),
            );
        }
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let body = proposal_body(&plan, &authed.csrf, error.as_deref());
    html_page(
        status,
        html::page(
            &format!("Proposal {}", plan.summary.id),
            Some(&authed.csrf),
            authed.flash.as_deref(),
            &body,
        ),
    )
}

fn proposal_body(plan: &Plan, csrf: &str, error: Option<&str>) -> String {
    let now = jiff::Timestamp::now();
    let s = &plan.summary;
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Proposal <code>{id}</code></h1>\
         <p>From agent <strong>{agent}</strong>, {age} ago; expires {exp}. Status: <strong>{status}</strong>.</p>\
         <h2>Message from the agent</h2><pre class=\"message\">{msg}</pre>",
        id = esc(&s.id),
        agent = text(&s.agent),
        age = html::age(s.created, now),
        exp = esc(&s.expires.strftime("%Y-%m-%d %H:%M UTC").to_string()),
        status = esc(&plan.status),
        msg = text(&plan.message),
    );
    b.push_str("<h2>What approving changes</h2>");
    if plan.services.is_empty() && plan.grants.is_empty() && plan.slots.is_empty() {
        b.push_str("<p>Nothing.</p>");
    }
    changes(plan, &mut b);
    if plan.status != "pending" {
        return b;
    }
    if let Some(e) = error {
        let _ = write!(
            b,
            "<p class=\"error\" role=\"alert\" id=\"form-error\">{}</p>",
            text(e)
        );
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/p/{id}/approve\" autocomplete=\"off\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">",
        id = esc(&s.id),
        csrf = esc(csrf)
    );
    if !plan.slots.is_empty() {
        b.push_str("<h3>Credentials</h3>");
    }
    for (i, slot) in plan.slots.iter().enumerate() {
        let _ = write!(
            b,
            "<fieldset><legend><code>{path}</code> — {action} ({kind}){exists}</legend>\
             <p>{desc}</p>",
            path = text(&slot.path),
            action = esc(&slot.action),
            kind = esc(&slot.kind),
            exists = match (slot.action.as_str(), slot.exists) {
                ("set", true) => ", replaces the current value",
                ("set", false) => ", new",
                _ => "",
            },
            desc = text(&slot.description),
        );
        if !slot.obtain.is_empty() {
            let _ = write!(
                b,
                "<p><span class=\"muted\">Where to obtain it:</span> {}</p>",
                text(&slot.obtain)
            );
        }
        if slot.needs_value {
            let _ = write!(
                b,
                "<label for=\"slot-{i}\">Value for {path}</label>\
                 <input type=\"password\" id=\"slot-{i}\" name=\"value:{path_attr}\" required \
                 autocomplete=\"new-password\" spellcheck=\"false\">",
                path = text(&slot.path),
                path_attr = esc(&slot.path),
            );
        } else if slot.agent_value {
            b.push_str("<p class=\"muted\">The agent supplied this value itself (encrypted to the owners).</p>");
        } else if slot.kind == "oauth" && slot.action == "set" {
            b.push_str(
                "<p class=\"muted\">An OAuth credential: after approving, you connect it at \
                 the provider (sign in and approve there).</p>",
            );
        }
        b.push_str("</fieldset>");
    }
    b.push_str("<button type=\"submit\" id=\"approve\">Approve</button></form>");
    let _ = write!(
        b,
        "<h3>Deny</h3><form method=\"post\" action=\"/p/{id}/deny\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"reason\">Reason (the agent reads it)</label>\
         <textarea id=\"reason\" name=\"reason\" maxlength=\"2000\"></textarea>\
         <button type=\"submit\" id=\"deny\" class=\"deny\">Deny</button></form>",
        id = esc(&s.id),
        csrf = esc(csrf)
    );
    b
}

/// Services, grants, the decision if any, and what would make approval fail.
fn changes(plan: &Plan, b: &mut String) {
    if !plan.services.is_empty() {
        b.push_str("<h3>Services</h3><ul class=\"plain\">");
        for sv in &plan.services {
            let _ = write!(
                b,
                "<li><strong>{}</strong> ({}): hosts {}; authentication: {}{}{}</li>",
                text(&sv.name),
                if sv.replaces {
                    "replaces the current one"
                } else {
                    "new"
                },
                codes(&sv.hosts),
                text(&sv.auth),
                if sv.secrets.is_empty() {
                    String::new()
                } else {
                    format!("; injects {}", codes(&sv.secrets))
                },
                if sv.replaces {
                    format!("; hosts now: {}", codes(&sv.old_hosts))
                } else {
                    String::new()
                },
            );
        }
        b.push_str("</ul>");
    }
    if !plan.grants.is_empty() {
        b.push_str("<h3>Grants</h3><ul class=\"plain\">");
        for g in &plan.grants {
            let _ = write!(
                b,
                "<li>agent <strong>{}</strong> may <strong>{}</strong> group <code>{}</code>{}</li>",
                text(&g.agent),
                text(&g.mode),
                text(&g.group),
                if g.new_group { " (a new group)" } else { "" },
            );
        }
        b.push_str("</ul>");
    }
    if let Some(d) = &plan.decided {
        let _ = write!(b, "<p class=\"flash\">Decided: {}</p>", text(d));
    }
    if !plan.problems.is_empty() {
        b.push_str("<div class=\"error\" role=\"alert\"><p>Approving would fail now:</p><ul class=\"plain\">");
        for p in &plan.problems {
            let _ = write!(b, "<li>{}</li>", text(p));
        }
        b.push_str("</ul></div>");
    }
}

/// Names as a list of `<code>` items.
fn codes(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|i| format!("<code>{}</code>", text(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `POST /p/ID/approve`: the typed values go from the form straight into
/// the approval; on an error the form comes back empty.
pub(crate) async fn approve(app: &App, authed: &Authed, id: &str, mut form: Form) -> Answer {
    let id_owned = id.to_owned();
    let plan = match blocking(&app.owner, move |o| store::plan(o, &id_owned)).await {
        Ok(p) => p,
        Err(e) => return proposal(app, authed, id, Some(e)).await,
    };
    let mut values = Vec::new();
    for slot in plan.slots.iter().filter(|s| s.needs_value) {
        let field = format!("value:{}", slot.path);
        match form.take(&field) {
            Some(mut v) if !v.is_empty() => {
                // Moved, not copied: the zeroizing buffer is left empty.
                let v = std::mem::take(&mut *v);
                values.push((slot.path.clone(), SecretBox::new(Box::new(v))));
            }
            _ => {
                let e = format!("{} needs a value: type it in its field.", slot.path);
                return proposal(app, authed, id, Some(e)).await;
            }
        }
    }
    drop(form);
    // The first OAuth slot to connect, where approving leads.
    let connect = plan
        .slots
        .iter()
        .find(|s| s.kind == "oauth" && s.action == "set" && !s.agent_value)
        .map(|s| s.path.clone());
    let id_owned = id.to_owned();
    match blocking(&app.owner, move |o| store::approve(o, &id_owned, values)).await {
        Ok(done) => {
            app.sessions.flash(&authed.cookie, done);
            match connect {
                Some(path) => redirect(&format!("/oauth?path={path}")),
                None => redirect("/"),
            }
        }
        Err(e) => proposal(app, authed, id, Some(e)).await,
    }
}

/// `POST /p/ID/deny`: the reason goes to the agent.
pub(crate) async fn deny(app: &App, authed: &Authed, id: &str, form: Form) -> Answer {
    let reason = form
        .get("reason")
        .map(|r| String::from_utf8_lossy(r).trim().to_owned())
        .unwrap_or_default();
    let id_owned = id.to_owned();
    match blocking(&app.owner, move |o| store::deny(o, &id_owned, &reason)).await {
        Ok(()) => {
            app.sessions
                .flash(&authed.cookie, format!("Denied proposal {id}."));
            redirect("/")
        }
        Err(e) => proposal(app, authed, id, Some(e)).await,
    }
}

/// `POST /sync`: the owner's sync, then back to the list.
pub(crate) async fn sync(app: &App, authed: &Authed) -> Answer {
    let msg = match blocking(&app.owner, store::sync).await {
        Ok(m) => m,
        Err(e) => format!("Sync failed: {e}"),
    };
    app.sessions.flash(&authed.cookie, msg);
    redirect("/")
}

/// `GET /audit`: the newest audit records (names, never values).
pub(crate) async fn audit(app: &App, authed: &Authed) -> Answer {
    let mut body = String::from("<h1>Recent audit records</h1>");
    match &app.audit {
        None => body.push_str(
            "<p>No audit log given: start the page with <code>agent-vault ui --audit FILE</code> \
             (the file the broker writes with <code>proxy --audit</code>).</p>",
        ),
        Some(path) => {
            let path = path.clone();
            let read = tokio::task::spawn_blocking(move || super::audit::recent(&path, 100)).await;
            match read {
                Ok(Ok(records)) => body.push_str(&super::audit::table(&records)),
                Ok(Err(e)) => {
                    let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", text(&e));
                }
                Err(_) => body.push_str("<p class=\"error\">cannot read the audit log</p>"),
            }
        }
    }
    html_page(
        StatusCode::OK,
        html::page("Audit", Some(&authed.csrf), authed.flash.as_deref(), &body),
    )
}
