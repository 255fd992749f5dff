//! One DPoP proof checked as RFC 9449 §4.3 asks: a JWS typed `dpop+jwt`, an allow-listed
//! asymmetric `alg`, a public `jwk` in its header that verifies it, and claims that name this
//! request (`htm`, `htu`), this moment (`iat`) and this access token (`ath`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Claims, UntrustedToken};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{DpopConfig, JwsAlg};
use crate::jwks::PublicKey;
use crate::path;

/// The longest proof read (a proof with an RSA-4096 key is about 2 KB).
pub const MAX_PROOF_BYTES: usize = 8192;

/// What a proof must name: the request it came with and the token it goes with.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:scheme` (the request's own origin is `scheme://authority`).
    pub scheme: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:path` (its query is ignored).
    pub path: &'a str,
    /// The access token of the request.
    pub token: &'a str,
}

/// A proof that holds: its key's thumbprint, its `jti` and `iat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// `jti`.
    pub jti: String,
    /// `iat`, seconds since the epoch.
    pub iat: u64,
}

/// Why a proof is refused; each reason is safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// Not a compact JWS, too large, or claims that do not parse.
    Malformed,
    /// `typ` is not `dpop+jwt`.
    Type,
    /// `alg` not on `dpop.algorithms`, or not the key's.
    Algorithm,
    /// No `jwk`, a private one, or one of a type or size not accepted.
    Key,
    /// The signature does not verify with the header's key.
    Signature,
    /// No `jti`.
    Jti,
    /// `htm` is not the request's method.
    Method,
    /// `htu` is not the request's URI.
    Uri,
    /// `iat` missing, too old or in the future.
    Time,
    /// `ath` is not the hash of the access token.
    TokenHash,
}

impl ProofError {
    /// The `error_description` of the refusal.
    pub fn describe(self) -> &'static str {
        match self {
            ProofError::Malformed => "DPoP proof is malformed",
            ProofError::Type => "DPoP proof typ is not dpop+jwt",
            ProofError::Algorithm => "DPoP proof algorithm is not accepted",
            ProofError::Key => "DPoP proof jwk is missing, private or not accepted",
            ProofError::Signature => "DPoP proof signature does not verify",
            ProofError::Jti => "DPoP proof has no jti",
            ProofError::Method => "DPoP proof htm does not match the request method",
            ProofError::Uri => "DPoP proof htu does not match the request URI",
            ProofError::Time => "DPoP proof iat is missing or outside the accepted window",
            ProofError::TokenHash => "DPoP proof ath does not match the access token",
        }
    }
}

/// The JOSE header members read beside `alg` and `typ`.
#[derive(Deserialize, Clone)]
struct Header {
    #[serde(default)]
    jwk: Option<serde_json::Value>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The proof's claims beside `iat`.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
    #[serde(default)]
    ath: Option<String>,
}

/// The longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;

/// Checks `proof` for `target` at `now_s` under `rules` (`origins`: the external origins `htu`
/// may name, lower case).
pub fn verify(
    proof: &str,
    target: &Target<'_>,
    rules: &DpopConfig,
    now_s: u64,
) -> Result<Proven, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed);
    }
    let untrusted = UntrustedToken::<Header>::try_from(proof).map_err(|_| ProofError::Malformed)?;
    let header = untrusted.header();
    // RFC 7515 §4.1.11: no extension is understood here.
    if header.other_fields.crit.is_some() {
        return Err(ProofError::Malformed);
    }
    if !header.token_type.as_deref().is_some_and(is_dpop_type) {
        return Err(ProofError::Type);
    }
    let alg = JwsAlg::from_name(untrusted.algorithm())
        .filter(|a| rules.algorithms.contains(a))
        .ok_or(ProofError::Algorithm)?;
    let jwk_value = header.other_fields.jwk.as_ref().ok_or(ProofError::Key)?;
    let jwk = JsonWebKey::deserialize(jwk_value).map_err(|_| ProofError::Key)?;
    if jwk.is_signing_key() || jwk_value.get("d").is_some() {
        return Err(ProofError::Key);
    }
    let key = PublicKey::from_jwk(&jwk).ok_or(ProofError::Key)?;
    if !key.fits(alg) {
        return Err(ProofError::Algorithm);
    }
    let checked = key
        .validate::<Body, _>(alg, &untrusted)
        .ok_or(ProofError::Algorithm)?
        .map_err(|_| ProofError::Signature)?;
    let claims: &Claims<Body> = checked.claims();
    let body = &claims.custom;
    let jti = body.jti.as_deref().unwrap_or_default();
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(ProofError::Jti);
    }
    if body.htm.as_deref() != Some(target.method) {
        return Err(ProofError::Method);
    }
    let htu = body.htu.as_deref().ok_or(ProofError::Uri)?;
    if !same_uri(htu, target, &rules.origins) {
        return Err(ProofError::Uri);
    }
    let iat = claims
        .issued_at
        .as_ref()
        .map(secs)
        .ok_or(ProofError::Time)?;
    let oldest = now_s.saturating_sub(rules.max_age_s + rules.clock_skew_s);
    if iat < oldest || iat > now_s.saturating_add(rules.clock_skew_s) {
        return Err(ProofError::Time);
    }
    if body.ath.as_deref() != Some(token_hash(target.token).as_str()) {
        return Err(ProofError::TokenHash);
    }
    Ok(Proven {
        jkt: proof_thumbprint(&jwk),
        jti: jti.to_string(),
        iat,
    })
}

/// The RFC 7638 SHA-256 thumbprint of a public key, base64url: what a bound token's
/// `cnf.jkt` holds.
pub fn proof_thumbprint(jwk: &JsonWebKey<'_>) -> String {
    URL_SAFE_NO_PAD.encode(jwk.thumbprint::<Sha256>())
}

/// `ath`: base64url(SHA-256(the token's ASCII)).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// `typ` compared as a media type: `dpop+jwt`, with or without `application/`, any case.
fn is_dpop_type(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    t == "dpop+jwt" || t == "application/dpop+jwt"
}

fn secs(t: &DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp()).unwrap_or(0)
}

/// Whether `htu` names the request (RFC 9449 §4.3 point 9, RFC 3986 §6.2.2): its origin the
/// request's own or one of `origins`, its path the request's, queries and fragments ignored.
fn same_uri(htu: &str, target: &Target<'_>, origins: &[String]) -> bool {
    let Some((origin, path)) = split(htu) else {
        return false;
    };
    let own = normal_origin(target.scheme, target.authority);
    let origin_ok = own.as_deref() == Some(origin.as_str())
        || origins
            .iter()
            .any(|o| split(o).is_some_and(|(n, _)| n == origin));
    origin_ok && path::normalize(path).path == path::normalize(target.path).path
}

/// An absolute http(s) URI's normalized origin and its path (empty: `/`), query and fragment
/// dropped; `None` when it is not one (another scheme, a user part, no host).
fn split(uri: &str) -> Option<(String, &str)> {
    let uri = &uri[..uri.find(['?', '#']).unwrap_or(uri.len())];
    let (scheme, rest) = uri.split_once("://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let origin = normal_origin(scheme, authority)?;
    Some((origin, if path.is_empty() { "/" } else { path }))
}

/// `scheme://host[:port]` in lower case, the scheme's default port dropped.
fn normal_origin(scheme: &str, authority: &str) -> Option<String> {
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let bad = |c: char| "@/?#\\".contains(c) || c.is_whitespace() || c.is_control();
    if authority.is_empty() || authority.contains(bad) {
        return None;
    }
    let host = authority.to_ascii_lowercase();
    let host = host
        .strip_suffix(default)
        .or_else(|| host.strip_suffix(':'))
        .unwrap_or(&host);
    Some(format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests;
