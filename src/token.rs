//! Reading the caller's token: extraction from the request header, verification of a JWT
//! against trusted issuers (RFC 7519/7515, RFC 8725), the unverified `exp` of a JWT (only ever
//! used to shorten a cache lifetime), and the short hash that logs carry.

use std::borrow::Cow;
#[cfg(feature = "trusted-issuers")]
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use chrono::{DateTime, Utc};

#[cfg(feature = "trusted-issuers")]
use jwt_compact::alg::{Ed25519, Es256, Rsa};
#[cfg(feature = "trusted-issuers")]
use jwt_compact::AlgorithmExt;
use jwt_compact::{Claims, Empty, Token, UntrustedToken, ValidationError};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::JwsAlg;
use crate::config::{KeySource, TrustedIssuer};
use crate::host::{Host, LogLevel};
use crate::jwks::{KeySet, Lookup, PublicKey};
use crate::jwt_error::JwtError;
use crate::policy::{claims_bytes, Claims as ClaimSet, Facts};

/// What the subject header held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// A well-formed token.
    Token(&'a str),
    /// No header, or a header with another scheme.
    Missing,
    /// The scheme matched but the token is unusable; the reason is safe to show the client.
    Malformed(&'static str),
}

/// Extracts the token from a header value: `prefix` is matched case-insensitively (an empty
/// prefix takes the whole value), the token must be an RFC 6750 `b64token` of at most
/// `max_bytes`.
pub fn extract<'a>(value: Option<&'a str>, prefix: &str, max_bytes: usize) -> Extracted<'a> {
    let Some(value) = value else {
        return Extracted::Missing;
    };
    // Proxies strip optional white space around a field value; a host may not have.
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let rest = if prefix.is_empty() {
        value
    } else {
        let (v, p) = (value.as_bytes(), prefix.as_bytes());
        let scheme = prefix.trim_end().as_bytes();
        if v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p) {
            // The prefix is ASCII, so this cut lands on a char boundary.
            value.get(p.len()..).unwrap_or_default()
        } else if v.eq_ignore_ascii_case(scheme) {
            return Extracted::Malformed("no token after the scheme");
        } else if !scheme.is_empty()
            && v.len() > scheme.len()
            && v[..scheme.len()].eq_ignore_ascii_case(scheme)
            && !is_tchar(v[scheme.len()])
        {
            // The configured scheme, then something other than its separator (a tab, a comma,
            // a control byte): a bearer credential gone wrong, not another scheme.
            return Extracted::Malformed("malformed credentials after the scheme");
        } else {
            return Extracted::Missing;
        }
    };
    let token = rest.trim_matches(|c| c == ' ' || c == '\t');
    if token.is_empty() {
        return Extracted::Malformed("no token after the scheme");
    }
    if token.len() > max_bytes {
        return Extracted::Malformed("token too large");
    }
    if !is_b64token(token) {
        return Extracted::Malformed("token is not a valid bearer token");
    }
    Extracted::Token(token)
}

/// RFC 9110 §5.6.2 `tchar`: what an auth-scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

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

/// A debug line about request (or call) `ctx` naming its token by [`fingerprint`], never the
/// token itself.
pub fn log_debug<H: Host>(host: &H, ctx: u32, token: &str, what: &str) {
    if host.debug_enabled() {
        let fp = fingerprint(token);
        host.log(LogLevel::Debug, &format!("ctx={ctx} token={fp} {what}"));
    }
}

/// A short, non-reversible tag for a token, for log lines.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

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
    let Some(verified) = check_signature(&key.public, alg, &untrusted) else {
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
    }
}

/// The signature check of `token` with `key` for `alg` (which also checks the time claims'
/// format); `None` when the key does not serve that algorithm.
#[cfg_attr(not(feature = "trusted-issuers"), allow(unused_variables))]
fn check_signature(
    key: &PublicKey,
    alg: JwsAlg,
    token: &UntrustedToken<'_, Extensions>,
) -> Option<Result<Token<Registered, Extensions>, ValidationError>> {
    match *key {
        #[cfg(feature = "trusted-issuers")]
        PublicKey::Rsa(ref k) => {
            let rsa = Rsa::from_str(alg.name()).ok()?;
            Some(rsa.validator::<Registered>(k).validate(token))
        }
        #[cfg(feature = "trusted-issuers")]
        PublicKey::P256(ref k) => {
            (alg == JwsAlg::Es256).then(|| Es256.validator::<Registered>(k).validate(token))
        }
        #[cfg(feature = "trusted-issuers")]
        PublicKey::Ed25519(ref k) => {
            (alg == JwsAlg::EdDsa).then(|| Ed25519.validator::<Registered>(k).validate(token))
        }
    }
}

/// Test helpers shared with other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use jwt_compact::UntrustedToken;

    /// One claim of a JWT, unverified, as JSON.
    pub fn claim(token: &str, name: &str) -> serde_json::Value {
        UntrustedToken::new(token)
            .unwrap()
            .deserialize_claims_unchecked::<serde_json::Value>()
            .unwrap()
            .custom[name]
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const P: &str = "Bearer ";

    #[test]
    fn bearer_scheme_is_matched_case_insensitively() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr   abc  "] {
            assert_eq!(extract(Some(v), P, 100), Extracted::Token("abc"), "{v}");
        }
    }

    #[test]
    fn other_schemes_and_absent_headers_count_as_missing() {
        assert_eq!(extract(None, P, 100), Extracted::Missing);
        assert_eq!(
            extract(Some("Basic dXNlcjpwdw=="), P, 100),
            Extracted::Missing
        );
        assert_eq!(extract(Some("Bearerabc"), P, 100), Extracted::Missing);
        assert_eq!(extract(Some(""), P, 100), Extracted::Missing);
    }

    #[test]
    fn a_bearer_credential_gone_wrong_is_malformed_not_missing() {
        for v in [
            "Bearer\tabc",
            "bearer\u{b}abc",
            "Bearer,abc",
            "Bearer\u{0}abc",
            "BEARER\t\tabc",
        ] {
            assert!(
                matches!(extract(Some(v), P, 100), Extracted::Malformed(_)),
                "{v:?}"
            );
        }
        // Surrounding white space is not part of the value.
        assert_eq!(
            extract(Some("  Bearer abc \t"), P, 100),
            Extracted::Token("abc")
        );
        assert_eq!(
            extract(Some("\tbearer abc"), P, 100),
            Extracted::Token("abc")
        );
        // Another scheme, even one that starts like ours, is not ours.
        assert_eq!(extract(Some("BearerX abc"), P, 100), Extracted::Missing);
        assert_eq!(extract(Some("Basic abc"), P, 100), Extracted::Missing);
    }

    #[test]
    fn scheme_without_token_is_malformed() {
        assert!(matches!(
            extract(Some("Bearer"), P, 100),
            Extracted::Malformed(_)
        ));
        assert!(matches!(
            extract(Some("Bearer    "), P, 100),
            Extracted::Malformed(_)
        ));
        assert!(matches!(
            extract(Some("x-token"), "", 100),
            Extracted::Token("x-token")
        ));
        assert!(matches!(
            extract(Some("  "), "", 100),
            Extracted::Malformed(_)
        ));
    }

    #[test]
    fn size_limit_is_inclusive() {
        let at = "a".repeat(16);
        let over = "a".repeat(17);
        assert_eq!(
            extract(Some(&format!("Bearer {at}")), P, 16),
            Extracted::Token(&at)
        );
        assert_eq!(
            extract(Some(&format!("Bearer {over}")), P, 16),
            Extracted::Malformed("token too large")
        );
    }

    #[test]
    fn only_b64token_characters_are_accepted() {
        assert_eq!(
            extract(Some("Bearer a.b-c_d~e+f/g=="), P, 100),
            Extracted::Token("a.b-c_d~e+f/g==")
        );
        for bad in [
            "Bearer a b",
            "Bearer a\"b",
            "Bearer é",
            "Bearer a=b",
            "Bearer ==",
            "Bearer a,b",
        ] {
            assert!(
                matches!(extract(Some(bad), P, 100), Extracted::Malformed(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn multibyte_values_never_split_a_char() {
        assert_eq!(extract(Some("Beéé"), P, 100), Extracted::Missing);
        assert_eq!(extract(Some("é"), P, 100), Extracted::Missing);
    }

    fn jwt(claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        format!("{h}.{c}.sig")
    }

    #[test]
    fn exp_is_read_from_jwts_only() {
        assert_eq!(
            unverified_exp(&jwt(r#"{"exp":1700000000,"sub":"u"}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(unverified_exp(&jwt(r#"{"sub":"u"}"#)), None);
        assert_eq!(unverified_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(unverified_exp("opaque-token"), None);
        assert_eq!(unverified_exp("a.b.c"), None);
    }

    mod jwt {
        use super::super::*;
        use crate::config::{KeySource, TrustedIssuer};
        use crate::jwks::tests::TestKeys;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use serde_json::json;
        use std::sync::OnceLock;

        const NOW: u64 = 1_800_000_000;
        const ISS: &str = "https://idp.example";

        fn keys() -> &'static TestKeys {
            static KEYS: OnceLock<TestKeys> = OnceLock::new();
            KEYS.get_or_init(TestKeys::new)
        }

        fn issuer(audiences: &[&str]) -> TrustedIssuer {
            TrustedIssuer {
                issuer: ISS.into(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                algorithms: vec![JwsAlg::Rs256, JwsAlg::Es256, JwsAlg::EdDsa],
                leeway_s: 30,
                keys: KeySource::Inline(keys().jwks()),
                forward: false,
                introspection: None,
            }
        }

        fn check_with(token: &str, iss: &TrustedIssuer) -> JwtCheck {
            let KeySource::Inline(doc) = &iss.keys else {
                unreachable!()
            };
            let set = KeySet::from_value(doc).unwrap();
            verify_jwt(token, std::slice::from_ref(iss), |_| Some(&set), NOW)
        }

        fn check(token: &str) -> JwtCheck {
            check_with(token, &issuer(&[]))
        }

        fn claims() -> serde_json::Value {
            json!({ "iss": ISS, "sub": "alice", "exp": NOW + 600, "iat": NOW - 10 })
        }

        const VALID: JwtCheck = JwtCheck::Valid {
            issuer: 0,
            exp: NOW + 600,
            may_act: MayAct::Unrestricted,
        };

        #[test]
        fn valid_rs256() {
            assert_eq!(check(&keys().sign("RS256", Some("rsa"), &claims())), VALID);
        }

        #[test]
        fn valid_es256() {
            assert_eq!(check(&keys().sign("ES256", Some("ec"), &claims())), VALID);
        }

        /// An issuer whose inline set is `keys`.
        fn issuer_with(keys: serde_json::Value) -> TrustedIssuer {
            TrustedIssuer {
                keys: KeySource::Inline(json!({ "keys": keys })),
                ..issuer(&[])
            }
        }

        #[test]
        fn keys_of_different_types_may_share_a_kid() {
            let k = keys();
            let mut rsa = k.rsa_jwk("shared");
            rsa["alg"] = "RS256".into();
            let iss = issuer_with(json!([rsa, k.ec_jwk("shared"), k.ed_jwk("shared")]));
            for alg in ["ES256", "RS256", "EdDSA"] {
                let t = k.sign(alg, Some("shared"), &claims());
                assert_eq!(check_with(&t, &iss), VALID, "{alg}");
            }
        }

        #[test]
        fn a_key_whose_key_ops_lack_verify_verifies_nothing() {
            let k = keys();
            let mut ec = k.ec_jwk("ec");
            ec["key_ops"] = json!(["encrypt"]);
            let mut ed = k.ed_jwk("ed");
            ed["key_ops"] = json!(["verify"]);
            let iss = issuer_with(json!([ec, ed]));
            let t = k.sign("ES256", Some("ec"), &claims());
            assert_eq!(check_with(&t, &iss), JwtCheck::UnknownKey(0));
            let t = k.sign("EdDSA", Some("ed"), &claims());
            assert_eq!(check_with(&t, &iss), VALID);
        }

        #[test]
        fn a_critical_header_extension_is_refused() {
            let header = json!({ "alg": "ES256", "kid": "ec", "crit": ["exp-ext"], "exp-ext": 1 });
            let t = keys().sign_with_header(&header, &claims());
            assert_eq!(check(&t), JwtCheck::Invalid(JwtError::Malformed));
            let header = json!({ "alg": "ES256", "kid": "ec", "crit": [] });
            let t = keys().sign_with_header(&header, &claims());
            assert_eq!(check(&t), JwtCheck::Invalid(JwtError::Malformed));
            let header = json!({ "alg": "ES256", "kid": "ec", "x-note": 1 });
            let t = keys().sign_with_header(&header, &claims());
            assert_eq!(check(&t), VALID, "a non-critical extension is ignored");
        }

        #[test]
        fn valid_eddsa() {
            assert_eq!(check(&keys().sign("EdDSA", Some("ed"), &claims())), VALID);
        }

        #[test]
        fn alg_none_is_refused() {
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"rsa"}"#);
            let c = URL_SAFE_NO_PAD.encode(claims().to_string());
            assert_eq!(
                check(&format!("{h}.{c}.")),
                JwtCheck::Invalid(JwtError::Algorithm)
            );
            assert_eq!(
                check(&format!("{h}.{c}")),
                JwtCheck::Invalid(JwtError::Malformed)
            );
        }

        #[test]
        fn hs256_signed_with_the_rsa_public_key_is_refused() {
            use jwt_compact::alg::{Hs256, Hs256Key};
            use jwt_compact::{Algorithm, AlgorithmSignature};
            let public = serde_json::to_vec(&keys().rsa_jwk("rsa")).unwrap();
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"rsa"}"#);
            let c = URL_SAFE_NO_PAD.encode(claims().to_string());
            let input = format!("{h}.{c}");
            let sig = Hs256.sign(&Hs256Key::new(&public), input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_bytes()));
            assert_eq!(check(&token), JwtCheck::Invalid(JwtError::Algorithm));
        }

        #[test]
        fn alg_that_does_not_fit_the_key_is_refused() {
            // An ES256 header naming the RSA key.
            let token = keys().sign("ES256", Some("rsa"), &claims());
            assert_eq!(check(&token), JwtCheck::Invalid(JwtError::Algorithm));
        }

        #[test]
        fn alg_off_the_issuers_list_is_refused() {
            let mut iss = issuer(&[]);
            iss.algorithms = vec![JwsAlg::Es256];
            let token = keys().sign("RS256", Some("rsa"), &claims());
            assert_eq!(
                check_with(&token, &iss),
                JwtCheck::Invalid(JwtError::Algorithm)
            );
        }

        #[test]
        fn tampered_payload_is_refused() {
            let token = keys().sign("RS256", Some("rsa"), &claims());
            let mut parts: Vec<String> = token.split('.').map(String::from).collect();
            let mut c = claims();
            c["sub"] = "mallory".into();
            parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
            assert_eq!(
                check(&parts.join(".")),
                JwtCheck::Invalid(JwtError::Signature)
            );
        }

        #[test]
        fn tampered_signature_is_refused() {
            let token = keys().sign("ES256", Some("ec"), &claims());
            let (head, sig) = token.rsplit_once('.').unwrap();
            let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
            bytes[10] ^= 0x01;
            let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
            assert_eq!(check(&forged), JwtCheck::Invalid(JwtError::Signature));
        }

        #[test]
        fn wrong_kid_asks_for_fresh_keys() {
            let token = keys().sign("RS256", Some("rotated"), &claims());
            assert_eq!(check(&token), JwtCheck::UnknownKey(0));
        }

        #[test]
        fn no_kid_with_one_fitting_key_verifies() {
            assert_eq!(check(&keys().sign("EdDSA", None, &claims())), VALID);
        }

        #[test]
        fn expired_is_refused() {
            let mut c = claims();
            c["exp"] = (NOW - 31).into();
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::Expired)
            );
        }

        #[test]
        fn expiry_inside_leeway_is_accepted() {
            let mut c = claims();
            c["exp"] = (NOW - 29).into();
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Valid {
                    issuer: 0,
                    exp: NOW - 29,
                    may_act: MayAct::Unrestricted,
                }
            );
        }

        #[test]
        fn missing_exp_is_refused() {
            let mut c = claims();
            c.as_object_mut().unwrap().remove("exp");
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::MissingExp)
            );
        }

        #[test]
        fn nbf_in_the_future_is_refused() {
            let mut c = claims();
            c["nbf"] = (NOW + 31).into();
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::NotYetValid)
            );
            c["nbf"] = (NOW + 29).into();
            assert_eq!(check(&keys().sign("RS256", Some("rsa"), &c)), VALID);
        }

        #[test]
        fn iat_in_the_future_is_refused() {
            let mut c = claims();
            c["iat"] = (NOW + 3600).into();
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::NotYetValid)
            );
        }

        #[test]
        fn wrong_iss_is_refused() {
            let mut c = claims();
            c["iss"] = "https://evil.example".into();
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::UntrustedIssuer)
            );
            c.as_object_mut().unwrap().remove("iss");
            assert_eq!(
                check(&keys().sign("RS256", Some("rsa"), &c)),
                JwtCheck::Invalid(JwtError::UntrustedIssuer)
            );
        }

        #[test]
        fn aud_missing_string_or_list() {
            let iss = issuer(&["api://edge", "api://other"]);
            let mut c = claims();
            let token = |c: &serde_json::Value| keys().sign("ES256", Some("ec"), c);
            assert_eq!(
                check_with(&token(&c), &iss),
                JwtCheck::Invalid(JwtError::Audience)
            );
            c["aud"] = "api://edge".into();
            assert_eq!(check_with(&token(&c), &iss), VALID);
            c["aud"] = "api://nope".into();
            assert_eq!(
                check_with(&token(&c), &iss),
                JwtCheck::Invalid(JwtError::Audience)
            );
            c["aud"] = json!(["x", "api://other"]);
            assert_eq!(check_with(&token(&c), &iss), VALID);
            c["aud"] = json!(["x", "y"]);
            assert_eq!(
                check_with(&token(&c), &iss),
                JwtCheck::Invalid(JwtError::Audience)
            );
            // without configured audiences, aud is not checked
            assert_eq!(check(&token(&c)), VALID);
        }

        #[test]
        fn not_three_segments_is_malformed() {
            assert_eq!(check("abc.def"), JwtCheck::Invalid(JwtError::Malformed));
            assert_eq!(check("opaque"), JwtCheck::Invalid(JwtError::Malformed));
            let token = keys().sign("RS256", Some("rsa"), &claims());
            assert_eq!(
                check(&format!("{token}.extra")),
                JwtCheck::Invalid(JwtError::Malformed)
            );
        }

        #[test]
        fn bad_base64_is_malformed() {
            let token = keys().sign("RS256", Some("rsa"), &claims());
            let broken = token.replacen('.', ".!!", 1);
            assert_eq!(check(&broken), JwtCheck::Invalid(JwtError::Malformed));
        }

        #[test]
        fn a_100_kb_token_is_handled() {
            let mut c = claims();
            c["pad"] = "x".repeat(100 * 1024).into();
            let token = keys().sign("RS256", Some("rsa"), &c);
            assert!(token.len() > 100 * 1024);
            assert_eq!(check(&token), VALID);
            assert_eq!(
                extract(Some(&format!("Bearer {token}")), "Bearer ", 8192),
                Extracted::Malformed("token too large")
            );
        }

        #[test]
        fn no_keys_yet_is_reported() {
            let iss = issuer(&[]);
            let token = keys().sign("RS256", Some("rsa"), &claims());
            assert_eq!(
                verify_jwt(&token, std::slice::from_ref(&iss), |_| None, NOW),
                JwtCheck::NoKeys(0)
            );
        }
    }

    #[test]
    fn fingerprint_is_short_stable_and_hides_the_token() {
        let f = fingerprint("secret-token");
        assert_eq!(f.len(), 8);
        assert_eq!(f, fingerprint("secret-token"));
        assert_ne!(f, fingerprint("secret-token2"));
        assert!(!f.contains("secret"));
    }
}
