//! HTML building blocks: escaping, and the frame every page shares. Every
//! piece of text that came from a vault file or an agent goes through
//! [`text`] (control and bidirectional characters shown escaped, then HTML
//! escaped); nothing else is ever spliced into a page.

use std::fmt::Write;

/// The stylesheet, served from the binary at `/static/style.css`.
pub(crate) const CSS: &str = include_str!("style.css");

/// HTML-escapes `s` (for text and for attribute values in double quotes).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text from outside (an agent, a vault file) for a page: printable, then
/// escaped. Line breaks are kept (each line cleaned alone).
pub(crate) fn text(s: &str) -> String {
    s.split('\n')
        .map(|l| {
            esc(&agent_vault_core::model::printable(
                l.trim_end_matches('\r'),
            ))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A whole page: head, navigation, an optional flash line, the body.
pub(crate) fn page(title: &str, nav: Option<&str>, flash: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · agent-vault</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body>",
        esc(title)
    );
    out.push_str("<header><span class=\"brand\">agent-vault</span>");
    if let Some(csrf) = nav {
        let _ = write!(
            out,
            "<nav aria-label=\"main\"><a href=\"/\">Proposals</a> <a href=\"/oauth\">Connect</a> <a href=\"/audit\">Audit</a> \
             <form method=\"post\" action=\"/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"link\">Log out</button></form></nav>",
            esc(csrf)
        );
    }
    out.push_str("</header><main>");
    if let Some(f) = flash {
        let _ = write!(out, "<p class=\"flash\" role=\"status\">{}</p>", text(f));
    }
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

/// A page with a heading and one paragraph (already HTML).
pub(crate) fn notice(title: &str, paragraph_html: &str, nav: Option<&str>) -> String {
    page(
        title,
        nav,
        None,
        &format!("<h1>{}</h1><p>{paragraph_html}</p>", esc(title)),
    )
}

/// How long ago, in words a glance reads ("3 min", "2 h", "5 d").
pub(crate) fn age(since: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.as_second().saturating_sub(since.as_second()).max(0);
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_cleans_controls() {
        assert_eq!(
            text("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert!(!text("a\u{202e}b").contains('\u{202e}'));
        assert_eq!(text("one\r\ntwo"), "one\ntwo");
    }
}
