//! Verifying a subject JWT against the trusted issuers (RFC 7519/7515, RFC 8725): the key by
//! `kid`, the allow-listed `alg`, `exp`, `nbf`, `iss`, `aud`, and what a verified token allows
//! (`may_act`) and tells (its facts).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use jwt_compact::{Claims, UntrustedToken};
use serde::Deserialize;

use crate::config::JwsAlg;
use crate::config::{KeySource, TrustedIssuer};
use crate::jwks::{KeySet, Lookup};
use crate::jwt_error::JwtError;
use crate::policy::{claims_bytes, Claims as ClaimSet, Facts};

/// Who a verified subject token allows to act for its subject (RFC 8693 §4.4 `may_act`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MayAct {
    /// No `may_act` claim: the token restricts nobody.
    #[default]
    Unrestricted,
    /// A `may_act` object: an actor must match every identifying claim it names.
    Names {
        /// `may_act.sub`.
        sub: Option<String>,
        /// `may_act.iss`.
        iss: Option<String>,
    },
}

impl MayAct {
    /// The `may_act` claim `v` (absent: unrestricted).
    pub fn from_claim(v: Option<&serde_json::Value>) -> MayAct {
        let Some(v) = v else {
            return MayAct::Unrestricted;
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        // Anything but an object (or an object naming nobody) authorises nobody.
        MayAct::Names {
            sub: text("sub"),
            iss: text("iss"),
        }
    }

    /// Whether the actor identified by `sub` (and `iss`, when known) may act.
    pub fn permits(&self, sub: Option<&str>, iss: Option<&str>) -> bool {
        match self {
            MayAct::Unrestricted => true,
            MayAct::Names {
                sub: want_sub,
                iss: want_iss,
            } => {
                want_sub.is_some()
                    && want_sub.as_deref() == sub
                    && want_iss.as_deref().is_none_or(|w| Some(w) == iss)
            }
        }
    }
}

/// What a verified token is bound to (its `cnf` claim, RFC 7800), as its issuer's
/// `bound_tokens: enforce` reads it; unbound when the issuer ignores bindings. Boxed: most
/// tokens are bound to nothing, and this rides in every verification kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binding(Option<Box<Bound>>);

/// The members of a `cnf` claim the filter checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    jkt: Option<String>,
    x5t: Option<String>,
    unknown: bool,
}

impl Binding {
    /// Bound to nothing.
    pub const NONE: Binding = Binding(None);

    /// The binding a `cnf` claim states (absent: none).
    pub fn from_cnf(cnf: Option<&serde_json::Value>) -> Binding {
        let Some(cnf) = cnf else {
            return Binding::NONE;
        };
        let text = |k: &str| cnf.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (jkt, x5t) = (text("jkt"), text("x5t#S256"));
        let malformed = |k: &str| cnf.get(k).is_some_and(|v| !v.is_string());
        let unknown = malformed("jkt") || malformed("x5t#S256") || (jkt.is_none() && x5t.is_none());
        Binding(Some(Box::new(Bound { jkt, x5t, unknown })))
    }

    /// Whether the token is bound to anything.
    pub fn is_bound(&self) -> bool {
        self.0.is_some()
    }

    /// `cnf.jkt` (RFC 9449 §6): the RFC 7638 thumbprint of the key its DPoP proofs are signed
    /// with.
    pub fn jkt(&self) -> Option<&str> {
        self.0.as_ref()?.jkt.as_deref()
    }

    /// `cnf["x5t#S256"]` (RFC 8705 §3): the SHA-256 thumbprint of the client certificate,
    /// base64url.
    pub fn x5t(&self) -> Option<&str> {
        self.0.as_ref()?.x5t.as_deref()
    }

    /// A `cnf` naming no key or certificate the filter can check (another method, a member that
    /// is not a string): never taken as a bearer token.
    pub fn unknown(&self) -> bool {
        self.0.as_ref().is_some_and(|b| b.unknown)
    }
}

/// A subject token that verified (a JWT by signature, an opaque token by introspection), as
/// remembered so a hot token is verified once: valid while its issuer's key set is still
/// `version`, `exp` (plus leeway) has not passed, and an introspection answer is still trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Index of the trusted issuer.
    pub issuer: usize,
    /// Fetch time of the key set it verified with (ms; 0 for inline keys).
    pub version: u64,
    /// `exp` claim, seconds since the epoch.
    pub exp: u64,
    /// The token's `may_act` (if any) names the actor of the request it was verified for.
    pub may_act_ok: bool,
    /// What its claims allow (the policies) and tell (the claim headers).
    pub facts: Facts,
    /// For an introspected token: when its answer stops being trusted (ms).
    pub until_ms: Option<u64>,
    /// For an introspected token: the answer's claims (a JWT's are read from the token).
    pub claims: Option<Arc<ClaimSet>>,
    /// What the token is bound to.
    pub binding: Binding,
}

impl Verified {
    /// About the bytes it keeps: its claim headers' values and an introspection answer's claims.
    pub fn bytes(&self) -> usize {
        self.facts.bytes() + self.claims.as_deref().map_or(0, claims_bytes)
    }
}

/// The outcome of checking a subject JWT against the trusted issuers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtCheck {
    /// Valid: the issuer's index, the token's `exp` (seconds since the epoch) and `may_act`.
    Valid {
        /// Index into the trusted issuers.
        issuer: usize,
        /// `exp` claim.
        exp: u64,
        /// `may_act` claim.
        may_act: MayAct,
        /// Its `cnf` binding (none when the issuer ignores bindings).
        binding: Binding,
    },
    /// Refused.
    Invalid(JwtError),
    /// The issuer's keys have not arrived yet.
    NoKeys(usize),
    /// The issuer has keys, but none with the token's `kid`: perhaps they rotated.
    UnknownKey(usize),
}

/// The JOSE header fields beyond those jwt-compact reads that the filter looks at.
#[derive(Deserialize, Clone)]
struct Extensions {
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The claims the filter checks itself (`exp`, `nbf`, `iat` come with [`Claims`]).
#[derive(Deserialize)]
struct Registered {
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    may_act: Option<serde_json::Value>,
    #[serde(default)]
    cnf: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            Audience::One(a) => wanted.contains(a),
            Audience::Many(list) => list.iter().any(|a| wanted.contains(a)),
        }
    }
}

/// Verifies `token` against `issuers`: the `iss` must be listed, `alg` on that issuer's list and
/// fit the key found by `kid` in `keys(issuer)`, the signature must verify, `exp` must be present
/// and not passed, `nbf`/`iat` not in the future, `aud` must name one of the issuer's audiences
/// when it lists any. Times are compared with the issuer's leeway.
pub fn verify_jwt<'k>(
    token: &str,
    issuers: &[TrustedIssuer],
    keys: impl Fn(usize) -> Option<&'k KeySet>,
    now_s: u64,
) -> JwtCheck {
    use JwtCheck::Invalid;
    let Ok(untrusted) = UntrustedToken::<Extensions>::try_from(token) else {
        return Invalid(JwtError::Malformed);
    };
    // RFC 7515 §4.1.11: the filter understands no header extension, so a token that marks any
    // as critical must be refused.
    if untrusted.header().other_fields.crit.is_some() {
        return Invalid(JwtError::Malformed);
    }
    let Some(alg) = JwsAlg::from_name(untrusted.algorithm()) else {
        return Invalid(JwtError::Algorithm);
    };
    let Ok(unchecked) = untrusted.deserialize_claims_unchecked::<Registered>() else {
        return Invalid(JwtError::Malformed);
    };
    let Some(index) = unchecked.custom.iss.as_deref().and_then(|iss| {
        issuers
            .iter()
            .position(|i| i.issuer == iss && i.keys != KeySource::None)
    }) else {
        // An issuer without keys issues opaque tokens only: a JWT naming it is not its own.
        return Invalid(JwtError::UntrustedIssuer);
    };
    let issuer = &issuers[index];
    if !issuer.algorithms.contains(&alg) {
        return Invalid(JwtError::Algorithm);
    }
    let Some(set) = keys(index) else {
        return JwtCheck::NoKeys(index);
    };
    let key = match set.find(untrusted.header().key_id.as_deref(), alg) {
        Lookup::Found(k) => k,
        Lookup::Unknown => return JwtCheck::UnknownKey(index),
        Lookup::Ambiguous => return Invalid(JwtError::UnknownKey),
    };
    if !key.public.fits(alg) || key.alg.as_deref().is_some_and(|a| a != alg.name()) {
        return Invalid(JwtError::Algorithm);
    }
    let Some(verified) = key.public.validate::<Registered, _>(alg, &untrusted) else {
        return Invalid(JwtError::Algorithm);
    };
    let Ok(verified) = verified else {
        return Invalid(JwtError::Signature);
    };
    let claims: &Claims<Registered> = verified.claims();
    let leeway = issuer.leeway_s;
    let secs = |t: &DateTime<Utc>| u64::try_from(t.timestamp()).unwrap_or(0);
    let Some(exp) = claims.expiration.as_ref().map(secs) else {
        return Invalid(JwtError::MissingExp);
    };
    if now_s >= exp.saturating_add(leeway) {
        return Invalid(JwtError::Expired);
    }
    let future = |t: &Option<DateTime<Utc>>| {
        t.as_ref()
            .is_some_and(|t| secs(t) > now_s.saturating_add(leeway))
    };
    if future(&claims.not_before) || future(&claims.issued_at) {
        return Invalid(JwtError::NotYetValid);
    }
    if !issuer.audiences.is_empty()
        && !claims
            .custom
            .aud
            .as_ref()
            .is_some_and(|a| a.contains_any(&issuer.audiences))
    {
        return Invalid(JwtError::Audience);
    }
    JwtCheck::Valid {
        issuer: index,
        exp,
        may_act: MayAct::from_claim(claims.custom.may_act.as_ref()),
        binding: match issuer.enforce_binding {
            true => Binding::from_cnf(claims.custom.cnf.as_ref()),
            false => Binding::NONE,
        },
    }
}
