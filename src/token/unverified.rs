//! What a JWT says, read without verifying it: only ever used to shorten a lifetime, to name
//! a consent's user from claims a trusted issuer already vouched for, or to key the cache on
//! one spelling of an ES256 signature.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use jwt_compact::{Empty, UntrustedToken};
use serde::Deserialize;

use crate::policy::Claims as ClaimSet;

/// The `exp` claim of a JWT, read without verifying it, in seconds since the epoch. Safe only for
/// shortening a lifetime: a forged value can only make the caller's own entry expire sooner.
pub fn unverified_exp(token: &str) -> Option<u64> {
    let parsed = UntrustedToken::new(token).ok()?;
    let claims = parsed.deserialize_claims_unchecked::<Empty>().ok()?;
    claims
        .expiration
        .map(|exp| u64::try_from(exp.timestamp()).unwrap_or(0))
}

#[derive(Deserialize)]
struct Subject {
    sub: Option<String>,
    iss: Option<String>,
    act: Option<ActClaim>,
}

#[derive(Deserialize)]
struct ActClaim {
    sub: Option<String>,
}

fn unverified_subject(token: &str) -> Option<Subject> {
    let parsed = UntrustedToken::new(token).ok()?;
    Some(
        parsed
            .deserialize_claims_unchecked::<Subject>()
            .ok()?
            .custom,
    )
}

/// The `sub` claim of a JWT, read without verifying it (the filter's own actor token, or one
/// the STS will judge).
pub fn unverified_sub(token: &str) -> Option<String> {
    unverified_subject(token)?.sub
}

/// The `sub` and `iss` claims of a JWT, read without verifying them (an actor token's identity,
/// compared with a subject token's `may_act`).
pub fn unverified_identity(token: &str) -> (Option<String>, Option<String>) {
    unverified_subject(token).map_or((None, None), |s| (s.sub, s.iss))
}

/// A user named by a claim of a (verified) JWT: its issuer, `sub` and the claim's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedUser {
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: String,
    /// The claim's value.
    pub value: String,
}

/// The user a JWT names by claim `name` (a string), with its `iss` and `sub`; `None` when any
/// of the three is missing. The claims are read unchecked: verify the token first.
pub fn claim_of(token: &str, name: &str) -> Option<NamedUser> {
    named_user(&claims(token)?, name, None)
}

/// The user verified `claims` name by claim `name`, with their `iss` (else `issuer`) and `sub`.
pub fn named_user(claims: &ClaimSet, name: &str, issuer: Option<&str>) -> Option<NamedUser> {
    let text = |n: &str| Some(claims.get(n)?.as_str()?.to_string());
    Some(NamedUser {
        iss: text("iss").or_else(|| issuer.map(str::to_string))?,
        sub: text("sub")?,
        value: text(name)?,
    })
}

/// Every claim of a JWT's payload, `exp` and the other registered ones included, read without
/// verifying it: verify the token first.
pub fn claims(token: &str) -> Option<ClaimSet> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `act.sub` claim of a JWT the STS just minted (RFC 8693 §4.1: only the outermost `act`
/// names the current actor).
pub fn unverified_act_sub(token: &str) -> Option<String> {
    unverified_subject(token)?.act?.sub
}

/// The one spelling of an ES256 JWS, whose signature has two: (r, s) and (r, n − s) both
/// verify, so anyone holding a token can write its twin. The low-S spelling is the canonical one;
/// any other token is returned as it is. Cache keys are taken over it, so both spellings share
/// one entry (and one negative-cache entry); the token itself is still sent as the caller wrote
/// it, and verified as written.
pub fn canonical(token: &str) -> Cow<'_, str> {
    const ES256_SIGNATURE_CHARS: usize = 86; // 64 bytes, base64url without padding
    let Some((signing_input, signature)) = token.rsplit_once('.') else {
        return Cow::Borrowed(token);
    };
    if signature.len() != ES256_SIGNATURE_CHARS {
        return Cow::Borrowed(token);
    }
    let es256 = UntrustedToken::new(token).is_ok_and(|t| t.algorithm() == "ES256");
    let low = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| p256::ecdsa::Signature::from_slice(&bytes).ok())
        .and_then(|sig| sig.normalize_s());
    match low {
        Some(low) if es256 => Cow::Owned(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(low.to_bytes())
        )),
        _ => Cow::Borrowed(token),
    }
}
