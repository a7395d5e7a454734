//! `oauth set` and `oauth presets`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use agent_vault_core::SecretPath;
use agent_vault_core::broker::oauth::{Client, OAuthCredential, PRESETS, preset};
use agent_vault_core::broker::oauth_state;
use agent_vault_core::writer::{SetOptions, Writer};
use agent_vault_proxy::oauth::TokenClient;
use serde_json::json;
use zeroize::Zeroizing;

use super::{Ctx, done, parse};
use crate::cli::{OauthCommand, OauthSetArgs};
use crate::output::{self, CliError, CliResult, line};

/// `oauth …`.
pub(super) fn run(ctx: &Ctx, cmd: OauthCommand) -> CliResult<ExitCode> {
    match cmd {
        OauthCommand::Set(args) => set(ctx, *args),
        OauthCommand::Presets => presets(ctx),
        OauthCommand::Status { path } => status(ctx, &path),
    }
}

/// A Unix time as RFC 3339, or `-`.
fn when(t: Option<i64>) -> String {
    t.and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into())
}

/// `oauth status`: the owner's value, then the broker's state as an owner
/// reads it (its signature checked against the broker the manifest names).
fn status(ctx: &Ctx, path: &str) -> CliResult<ExitCode> {
    let path: SecretPath = parse(path)?;
    let vault = ctx.vault()?;
    let reader = agent_vault_core::reader::Reader::open(&vault, &ctx.key_source())?;
    let value = reader.get(&path)?;
    let raw = agent_vault_core::secrecy::ExposeSecret::expose_secret(&value);
    if !OAuthCredential::is_oauth(raw) {
        return Err(CliError::Msg(
            format!("{path} is not an OAuth credential"),
            Some(format!("set one with `agent-vault oauth set {path} …`")),
        ));
    }
    let cred = OAuthCredential::parse(&path.to_string(), raw)?;
    let state = oauth_state::read_as_owner(&vault, reader.identity(), reader.manifest(), &path)?;
    let base = agent_vault_core::crypto::sha256_hex(raw);
    let (state_json, state_line) = match &state {
        None => (
            json!(null),
            "broker state: none (the broker starts from the owner's value)".to_owned(),
        ),
        Some(s) => (
            json!({
                "verified": true,
                "continues_owner_value": s.base == base,
                "access_token_expires": when(s.expires_at),
                "earlier_access_tokens": s.earlier.len(),
            }),
            format!(
                "broker state: signed by the broker; access token expires {}; {} earlier access token(s) scrubbed{}",
                when(s.expires_at),
                s.earlier.len(),
                if s.base == base {
                    ""
                } else {
                    "; stale (the owner set the credential since)"
                }
            ),
        ),
    };
    if ctx.json {
        output::json(&json!({
            "path": path.to_string(),
            "client_id": cred.client_id,
            "token_url": cred.token_url,
            "authorization_url": cred.authorization_url,
            "scopes": cred.scopes,
            "owner_access_token_expires": when(cred.expires_at),
            "broker_state": state_json,
        }))?;
    } else {
        line(format!(
            "{path}: client {} at {}",
            cred.client_id, cred.token_url
        ))?;
        line(format!(
            "owner's value: access token expires {}",
            when(cred.expires_at)
        ))?;
        line(state_line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `oauth presets`.
fn presets(ctx: &Ctx) -> CliResult<ExitCode> {
    if ctx.json {
        let all: Vec<_> = PRESETS
            .iter()
            .map(|p| json!({"name": p.name, "authorization_url": p.authorization_url, "token_url": p.token_url}))
            .collect();
        output::json(&json!(all))?;
    } else {
        for p in PRESETS {
            line(format!("{:<10} {}", p.name, p.token_url))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A secret from a file, or from standard input for `-`; one trailing
/// line break removed.
fn read_secret(what: &str, file: Option<&Path>) -> CliResult<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::new());
    match file {
        None => return Ok(Zeroizing::new(String::new())),
        Some(f) if f == Path::new("-") => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Msg(format!("cannot read standard input: {e}"), None))?;
        }
        Some(f) => {
            buf =
                Zeroizing::new(std::fs::read(f).map_err(|e| {
                    CliError::Msg(format!("cannot read {}: {e}", f.display()), None)
                })?);
        }
    }
    let mut end = buf.len();
    while end > 0 && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| CliError::Msg(format!("the {what} is not text"), None))?;
    if text.chars().any(char::is_whitespace) {
        return Err(CliError::Msg(
            format!("the {what} holds white space; give the token alone"),
            None,
        ));
    }
    Ok(Zeroizing::new(text.to_owned()))
}

/// `oauth set`: the refresh token is used at once; what the provider
/// grants (a rotated refresh token, an access token) is what is stored.
fn set(ctx: &Ctx, args: OauthSetArgs) -> CliResult<ExitCode> {
    let path: SecretPath = parse(&args.path)?;
    let stdin = Path::new("-");
    let refresh_file = args.refresh_token_file.as_deref().unwrap_or(stdin);
    if args.client_secret_file.as_deref() == Some(stdin) && refresh_file == stdin {
        return Err(CliError::Msg(
            "only one secret can come from standard input".into(),
            Some("give the other with its --…-file option".into()),
        ));
    }
    let preset = args.provider.as_deref().map(preset).transpose()?;
    let client = Client {
        client_id: args.client_id.clone(),
        client_secret: (*read_secret("client secret", args.client_secret_file.as_deref())?).clone(),
        token_url: args
            .token_url
            .clone()
            .or(preset.map(|p| p.token_url.to_owned()))
            .unwrap_or_default(),
        authorization_url: args
            .authorization_url
            .clone()
            .or(preset.map(|p| p.authorization_url.to_owned())),
        scopes: args.scopes.clone(),
    };
    let refresh = read_secret("refresh token", Some(refresh_file))?;
    if refresh.is_empty() {
        return Err(CliError::Msg(
            "no refresh token given".into(),
            Some("pipe it on standard input, or give --refresh-token-file FILE".into()),
        ));
    }
    // Checked before the network is asked anything.
    OAuthCredential::new(&client, (*refresh).clone(), None, None)?;
    // The writer is opened (the vault found, the key loaded, the lock
    // taken) before the provider is asked: a provider that rotates refresh
    // tokens has spent the old one once it answers, and the new one must
    // not be lost to a vault that cannot be written.
    let vault = ctx.vault()?;
    let mut writer = Writer::open(&vault, &ctx.key_source())?;
    let tokens = TokenClient::new(args.upstream_ca.as_deref(), args.allow_private_endpoints)
        .map_err(|e| CliError::Msg(e.to_string(), None))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Msg(format!("cannot start the runtime: {e}"), None))?;
    let granted = rt
        .block_on(tokens.refresh(&client, &refresh))
        .map_err(|e| {
            CliError::Msg(
                format!("{path}: {e}; nothing was stored"),
                Some("check the refresh token, client id and secret, or connect again".into()),
            )
        })?;
    let cred = OAuthCredential::new(
        &client,
        granted
            .refresh_token
            .clone()
            .unwrap_or_else(|| (*refresh).clone()),
        Some(granted.access_token.clone()),
        granted.expires_at,
    )?;
    let opts = SetOptions {
        expires: None,
        description: args.description,
    };
    writer.set(&path, &cred.to_value()?, &opts)?;
    done(
        ctx,
        &format!("set OAuth credential {path} (the provider accepted its refresh token)"),
    )
}
