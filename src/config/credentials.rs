//! The filter's client authentication at a server it calls (the STS, an introspection
//! endpoint): one method, its credentials in one place.

use super::raw::RawPrivateKey;
use super::raw::Whole;
use super::values::{shown, shown_env_name, whole};
use super::{ClientAuthConfig, ConfigError, PrivateKeyConfig};

/// The credential keys of one server, as written.
pub(super) struct Credentials {
    pub(super) method: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) private_key: Option<RawPrivateKey>,
}

/// A server's call timeout (default 2000 ms, 1–60000) and the filter's credentials there; a
/// `private_key_jwt` assertion's `aud` defaults to `https://<authority><path>`. Keys are named
/// under `prefix`.
pub(super) fn validate_server(
    timeout_ms: Option<Whole>,
    c: Credentials,
    (authority, path): (&str, &str),
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(u64, Option<String>, ClientAuthConfig), ConfigError> {
    let timeout_ms = whole(timeout_ms, 2000, 1..=60_000, format!("{prefix}.timeout_ms"))?;
    let audience = format!("https://{authority}{path}");
    let (client_id, client_auth) = validate_credentials(c, prefix, audience, env)?;
    Ok((timeout_ms, client_id, client_auth))
}

/// The client id and authentication method of `c` (keys named under `prefix`); a
/// `private_key_jwt` assertion's `aud` defaults to `default_audience`.
fn validate_credentials(
    c: Credentials,
    prefix: &str,
    default_audience: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<String>, ClientAuthConfig), ConfigError> {
    let method = c.method.as_deref().unwrap_or("client_secret_basic");
    let secret = match (c.secret, c.secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{prefix}.client_secret"),
                "give client_secret or client_secret_env, not both",
            ))
        }
        (Some(v), None) => Some(v),
        (None, Some(var)) => match env(&var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(ConfigError::new(
                    format!("{prefix}.client_secret_env"),
                    format!(
                        "environment variable {} is not set in the VM",
                        shown_env_name(&var)
                    ),
                ))
            }
        },
        (None, None) => None,
    };
    let client_id = c.client_id.filter(|id| !id.is_empty());
    if c.private_key.is_some() && method != "private_key_jwt" {
        return Err(ConfigError::new(
            format!("{prefix}.private_key"),
            "is only used with client_auth private_key_jwt",
        ));
    }
    let client_auth = match method {
        "none" => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    format!("{prefix}.client_secret"),
                    "must not be set when client_auth is none",
                ));
            }
            ClientAuthConfig::None
        }
        "client_secret_basic" | "client_secret_post" => {
            let id = client_id.clone().ok_or_else(|| {
                ConfigError::new(format!("{prefix}.client_id"), format!("is required for {method}"))
            })?;
            let secret = secret.ok_or_else(|| {
                ConfigError::new(
                    format!("{prefix}.client_secret"),
                    format!("client_secret or client_secret_env is required for {method}"),
                )
            })?;
            if method == "client_secret_basic" {
                ClientAuthConfig::Basic { id, secret }
            } else {
                ClientAuthConfig::Post { id, secret }
            }
        }
        "tls_client_auth" | "self_signed_tls_client_auth" => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    format!("{prefix}.client_secret"),
                    format!("must not be set with {method}: the certificate is the credential"),
                ));
            }
            let id = client_id.clone().ok_or_else(|| {
                ConfigError::new(format!("{prefix}.client_id"), format!("is required for {method}"))
            })?;
            ClientAuthConfig::Certificate {
                id,
                self_signed: method == "self_signed_tls_client_auth",
            }
        }
        "private_key_jwt" => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    format!("{prefix}.client_secret"),
                    "must not be set with private_key_jwt: credentials go in one place",
                ));
            }
            let id = client_id.clone().ok_or_else(|| {
                ConfigError::new(format!("{prefix}.client_id"), "is required for private_key_jwt")
            })?;
            let pk = c.private_key.ok_or_else(|| {
                ConfigError::new(format!("{prefix}.private_key"), "is required for private_key_jwt")
            })?;
            let pem = match (pk.pem, pk.pem_env) {
                (Some(p), None) => p,
                (None, Some(var)) => env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        format!("{prefix}.private_key.pem_env"),
                        format!(
                        "environment variable {} is not set in the VM",
                        shown_env_name(&var)
                    ),
                    )
                })?,
                _ => {
                    return Err(ConfigError::new(
                        format!("{prefix}.private_key"),
                        "give exactly one of pem and pem_env",
                    ))
                }
            };
            let alg = pk.alg.unwrap_or_else(|| "ES256".to_string());
            if !["ES256", "RS256", "EdDSA"].contains(&alg.as_str()) {
                return Err(ConfigError::new(
                    format!("{prefix}.private_key"),
                    "alg is not supported; use ES256, RS256 or EdDSA",
                ));
            }
            ClientAuthConfig::PrivateKeyJwt {
                id,
                key: PrivateKeyConfig {
                    pem,
                    alg,
                    kid: pk.kid,
                    audience: pk
                        .audience
                        .unwrap_or(default_audience),
                },
            }
        }
        other => {
            return Err(ConfigError::new(
                format!("{prefix}.client_auth"),
                format!(
                    "unknown method {}; use client_secret_basic, client_secret_post, private_key_jwt, tls_client_auth, self_signed_tls_client_auth or none",
                    shown(other, &METHODS)
                ),
            ))
        }
    };
    Ok((client_id, client_auth))
}

/// The client authentication methods a server's `client_auth` may name.
const METHODS: [&str; 6] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
    "none",
];
