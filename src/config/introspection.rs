//! The rules of RFC 7662 introspection: each issuer's endpoint and credentials, and which
//! issuer judges the opaque tokens of each route (a token is never shown to another issuer).

use super::credentials::{validate_server, Credentials};
use super::raw::RawIntrospection;
use super::values::*;
use super::*;

/// `trusted_issuers[i].introspection` (named `key`).
pub(super) fn validate_introspection(
    r: RawIntrospection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<IntrospectionConfig, ConfigError> {
    non_empty(&r.cluster, &format!("{key}.cluster"))?;
    non_empty(&r.authority, &format!("{key}.authority"))?;
    no_space_or_control(&r.authority, &format!("{key}.authority"))?;
    call_path(&r.path, &format!("{key}.path"))?;
    let cache_s = whole(r.cache_s, 60, 0..=86_400, format!("{key}.cache_s"))?;
    let creds = Credentials {
        method: r.client_auth,
        client_id: r.client_id,
        secret: r.client_secret,
        secret_env: r.client_secret_env,
        private_key: r.private_key,
    };
    let at = (r.authority.as_str(), r.path.as_str());
    let (timeout_ms, client_id, client_auth) = validate_server(r.timeout_ms, creds, at, key, env)?;
    Ok(IntrospectionConfig {
        cluster: r.cluster,
        authority: r.authority,
        path: r.path,
        timeout_ms,
        cache_s,
        client_id,
        client_auth,
    })
}

/// The introspecting issuer an `introspect` key (named `key`) names.
pub(super) fn introspecting(
    name: &str,
    issuers: &[TrustedIssuer],
    key: &str,
) -> Result<usize, ConfigError> {
    issuers
        .iter()
        .position(|t| t.issuer == name && t.introspection.is_some())
        .ok_or_else(|| {
            ConfigError::new(
                key,
                format!(
                    "names no trusted issuer with introspection ({})",
                    shown(
                        name,
                        &issuers
                            .iter()
                            .map(|t| t.issuer.as_str())
                            .collect::<Vec<_>>()
                    )
                ),
            )
        })
}

/// The issuer judging opaque tokens where no route names one: the top-level `introspect`, or
/// the only introspecting issuer. Several, and `introspect` nowhere: refused, since an opaque
/// token does not say who issued it.
pub(super) fn default_introspect(
    top: Option<&str>,
    routes_name_one: bool,
    issuers: &[TrustedIssuer],
) -> Result<Option<usize>, ConfigError> {
    if let Some(name) = top {
        return introspecting(name, issuers, "introspect").map(Some);
    }
    let all: Vec<usize> = (0..issuers.len())
        .filter(|&i| issuers[i].introspection.is_some())
        .collect();
    match all.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ if routes_name_one => Ok(None),
        _ => Err(ConfigError::new(
            "introspect",
            "several trusted issuers introspect: name the one for opaque tokens (top level or per route), a token must never reach an issuer that did not issue it",
        )),
    }
}
