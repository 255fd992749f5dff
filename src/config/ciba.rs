//! The rules of `sts.ciba`: the backchannel endpoint, poll or ping, how the user is named, and
//! how long a request waits.

use super::raw::RawCiba;
use super::values::*;
use super::*;

pub(super) fn validate_ciba(c: RawCiba) -> Result<CibaConfig, ConfigError> {
    let path = |p: &str, key: &str| {
        if p.starts_with('/')
            && !p
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?')
        {
            Ok(())
        } else {
            Err(ConfigError::new(key, "must be a path starting with '/'"))
        }
    };
    path(&c.path, "sts.ciba.path")?;
    let mode = match (c.mode.as_deref().unwrap_or("poll"), c.notify_path) {
        ("poll", None) => CibaMode::Poll,
        ("poll", Some(_)) => {
            return Err(ConfigError::new(
                "sts.ciba.notify_path",
                "is only for mode ping",
            ))
        }
        ("ping", Some(notify_path)) => {
            path(&notify_path, "sts.ciba.notify_path")?;
            CibaMode::Ping { notify_path }
        }
        ("ping", None) => {
            return Err(ConfigError::new(
                "sts.ciba.notify_path",
                "is required for mode ping",
            ))
        }
        (other, _) => {
            return Err(ConfigError::new(
                "sts.ciba.mode",
                format!(
                    "unknown mode {}; use poll or ping",
                    shown(other, &["poll", "ping"])
                ),
            ))
        }
    };
    let login_hint = match c.login_hint.as_deref().unwrap_or("sub") {
        "login_hint_token" => LoginHint::LoginHintToken,
        "id_token_hint" => LoginHint::IdTokenHint,
        claim if names_a_user(claim) => LoginHint::Claim(claim.to_string()),
        _ => return Err(ConfigError::new(
            "sts.ciba.login_hint",
            "must name the user: sub, email, phone_number, preferred_username, upn, a namespaced \
                 claim (a URI), login_hint_token or id_token_hint",
        )),
    };
    if let Some(m) = &c.binding_message {
        printable(m, "sts.ciba.binding_message")?;
        if m.is_empty() || m.len() > 64 {
            return Err(ConfigError::new(
                "sts.ciba.binding_message",
                "must be 1 to 64 characters (servers may accept fewer)",
            ));
        }
    }
    if let Some(a) = &c.acr_values {
        scope_tokens(a, "sts.ciba.acr_values")?;
    }
    let expiry = |e| whole(Some(e), 0, 1..=86_400, "sts.ciba.requested_expiry_s");
    let requested_expiry_s = c.requested_expiry_s.map(expiry).transpose()?;
    let wait_s = whole(c.wait_s, 30, 1..=300, "sts.ciba.wait_s")?;
    Ok(CibaConfig {
        path: c.path,
        mode,
        login_hint,
        binding_message: c.binding_message,
        acr_values: c.acr_values,
        requested_expiry_s,
        wait_s,
    })
}

/// The claims that name a user, so that they may be a `login_hint`: the registered ones, or a
/// namespaced custom claim (a URI, as OpenID Core §5.1.2 asks of claims of one's own). `iss`,
/// `aud`, `azp`, `scope` and the like name no one.
fn names_a_user(claim: &str) -> bool {
    const USER_CLAIMS: [&str; 5] = ["sub", "email", "phone_number", "preferred_username", "upn"];
    let namespaced = (claim.starts_with("https://")
        || claim.starts_with("http://")
        || claim.starts_with("urn:"))
        && claim.len() > 8
        && claim.bytes().all(|b| b.is_ascii_graphic());
    USER_CLAIMS.contains(&claim) || namespaced
}
