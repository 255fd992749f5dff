//! What an RFC 7662 introspection answer says about one opaque token: active (with its claims),
//! inactive, refused by the filter's own checks (`iss`, `aud`, `exp`, `nbf`), or unusable.

use serde_json::Value;

use crate::config::TrustedIssuer;
use crate::host::HttpAnswer;
use crate::policy::Claims;

/// An active token: the answer's members (its verified claims) and its `exp`, if given.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    /// Every member of the answer, `active` included.
    pub claims: Claims,
    /// `exp`, seconds since the epoch.
    pub exp: Option<u64>,
}

/// Why an introspection did not make a token trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `"active": false`: 401.
    Inactive,
    /// Active, but the filter's own checks refuse it: 401.
    Refused(Refusal),
    /// The endpoint refused the filter's credentials (401 or 403): 502.
    ClientRejected,
    /// An answer the filter cannot use: 502.
    Nonsense(&'static str),
    /// The endpoint could not be used: unreachable, timed out, 5xx, 429, or backing off: 503.
    Unavailable(&'static str),
}

/// What the filter's checks find wrong with an active answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `iss` names another issuer.
    Issuer,
    /// `aud` names none of the issuer's `audiences` (or is missing).
    Audience,
    /// `exp` has passed.
    Expired,
    /// `nbf` lies in the future.
    NotYetValid,
}

impl Refusal {
    /// Every refusal, in code order.
    pub const ALL: [Refusal; 4] = [
        Refusal::Issuer,
        Refusal::Audience,
        Refusal::Expired,
        Refusal::NotYetValid,
    ];

    /// The `error_description` of its 401.
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Issuer => "the introspection answer names another issuer",
            Refusal::Audience => "the token is not meant for this audience",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
        }
    }
}

impl Failure {
    /// The `error_description` (or 502 / 503 reason) of the answer a request gets.
    pub fn description(self) -> &'static str {
        match self {
            Failure::Inactive => "the token is not active",
            Failure::Refused(r) => r.description(),
            Failure::ClientRejected => {
                "the introspection endpoint rejected the proxy's credentials"
            }
            Failure::Nonsense(why) | Failure::Unavailable(why) => why,
        }
    }
}

/// Judges the answer of the introspection endpoint of `issuer` at `now_s`.
pub fn judge(answer: &HttpAnswer, issuer: &TrustedIssuer, now_s: u64) -> Result<Active, Failure> {
    match answer.status {
        None => Err(Failure::Unavailable(
            "the introspection endpoint is unreachable or timed out",
        )),
        Some(429 | 500..=599) => Err(Failure::Unavailable(
            "the introspection endpoint is unavailable",
        )),
        Some(401 | 403) => Err(Failure::ClientRejected),
        Some(200) if answer.too_large => {
            Err(Failure::Nonsense("the introspection answer is too large"))
        }
        Some(200) => judge_body(&answer.body, issuer, now_s),
        Some(_) => Err(Failure::Nonsense(
            "the introspection endpoint answered an unexpected status",
        )),
    }
}

/// Judges the JSON body of a 200 answer (RFC 7662 §2.2).
pub fn judge_body(body: &[u8], issuer: &TrustedIssuer, now_s: u64) -> Result<Active, Failure> {
    let Ok(claims) = serde_json::from_slice::<Claims>(body) else {
        return Err(Failure::Nonsense(
            "the introspection answer is not a JSON object",
        ));
    };
    match claims.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(Failure::Inactive),
        _ => {
            return Err(Failure::Nonsense(
                "the introspection answer has no boolean active",
            ))
        }
    }
    match claims.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(_) => return Err(Failure::Refused(Refusal::Issuer)),
    }
    if !issuer.audiences.is_empty() && !names_audience(claims.get("aud"), &issuer.audiences) {
        return Err(Failure::Refused(Refusal::Audience));
    }
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(Failure::Nonsense(
            "a time claim of the introspection answer is not a whole number",
        )),
    };
    let (exp, nbf) = (time("exp")?, time("nbf")?);
    let leeway = issuer.leeway_s;
    if exp.is_some_and(|exp| now_s >= exp.saturating_add(leeway)) {
        return Err(Failure::Refused(Refusal::Expired));
    }
    if nbf.is_some_and(|nbf| nbf > now_s.saturating_add(leeway)) {
        return Err(Failure::Refused(Refusal::NotYetValid));
    }
    Ok(Active { claims, exp })
}

/// `aud` (a string or a list of strings) names one of `audiences`.
fn names_audience(aud: Option<&Value>, audiences: &[String]) -> bool {
    let named = |v: &Value| v.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
    match aud {
        Some(Value::Array(list)) => list.iter().any(named),
        Some(v) => named(v),
        None => false,
    }
}

/// Whether `token` has the shape of a JWS (three base64url segments): such a token is verified
/// by signature, never introspected.
pub fn is_jwt_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    let b64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let shaped = parts.by_ref().take(3).filter(|p| b64url(p)).count() == 3;
    shaped && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;

    const NOW: u64 = 1_800_000_000;

    fn issuer(audiences: &[&str]) -> TrustedIssuer {
        TrustedIssuer {
            issuer: "https://partner.example".into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            algorithms: Vec::new(),
            leeway_s: 30,
            keys: KeySource::None,
            forward: false,
            introspection: None,
            enforce_binding: true,
        }
    }

    fn body(json: &str, audiences: &[&str]) -> Result<Active, Failure> {
        judge_body(json.as_bytes(), &issuer(audiences), NOW)
    }

    fn answer(status: Option<u16>, json: &str) -> HttpAnswer {
        HttpAnswer {
            status,
            body: json.as_bytes().to_vec(),
            too_large: false,
        }
    }

    #[test]
    fn an_active_answer_gives_its_members_as_claims() {
        let a = body(
            r#"{"active":true,"sub":"dora","scope":"a b","exp":1800000600,"iss":"https://partner.example","aud":["x","api://edge"]}"#,
            &["api://edge"],
        )
        .unwrap();
        assert_eq!(a.exp, Some(1_800_000_600));
        assert_eq!(a.claims["sub"], "dora");
        assert_eq!(a.claims["scope"], "a b");
        let bare = body(r#"{"active":true}"#, &[]).unwrap();
        assert_eq!(bare.exp, None, "no exp: cached for cache_s");
    }

    #[test]
    fn inactive_and_hostile_answers_never_make_a_token_trusted() {
        assert_eq!(body(r#"{"active":false}"#, &[]), Err(Failure::Inactive));
        assert_eq!(
            body(r#"{"active":false,"sub":"root"}"#, &[]),
            Err(Failure::Inactive)
        );
        for nonsense in [
            r#"{"active":"true"}"#,
            r#"{"active":1}"#,
            r#"{"sub":"dora"}"#,
            r#"[{"active":true}]"#,
            r#"true"#,
            "",
            "not json",
            r#"{"active":true,"exp":"1800000600"}"#,
            r#"{"active":true,"exp":-1}"#,
            r#"{"active":true,"exp":1.8e9}"#,
            r#"{"active":true,"nbf":null}"#,
        ] {
            assert!(
                matches!(body(nonsense, &[]), Err(Failure::Nonsense(_))),
                "{nonsense}"
            );
        }
        // A duplicate member: serde keeps the last one; either way it is one boolean.
        assert_eq!(
            body(r#"{"active":true,"active":false}"#, &[]),
            Err(Failure::Inactive)
        );
        let refused = |json: &str, aud: &[&str]| match body(json, aud) {
            Err(Failure::Refused(r)) => Some(r),
            _ => None,
        };
        assert_eq!(
            refused(r#"{"active":true,"iss":"https://evil.example"}"#, &[]),
            Some(Refusal::Issuer)
        );
        assert_eq!(
            refused(r#"{"active":true,"iss":"https://partner.example/"}"#, &[]),
            Some(Refusal::Issuer),
            "compared byte for byte"
        );
        assert_eq!(
            refused(r#"{"active":true,"iss":5}"#, &[]),
            Some(Refusal::Issuer)
        );
        assert_eq!(
            refused(r#"{"active":true,"aud":"api://other"}"#, &["api://edge"]),
            Some(Refusal::Audience)
        );
        assert_eq!(
            refused(r#"{"active":true}"#, &["api://edge"]),
            Some(Refusal::Audience),
            "no aud when audiences are configured"
        );
        assert_eq!(
            refused(r#"{"active":true,"aud":[["api://edge"]]}"#, &["api://edge"]),
            Some(Refusal::Audience)
        );
        assert_eq!(
            refused(r#"{"active":true,"exp":1799999970}"#, &[]),
            Some(Refusal::Expired),
            "exp + leeway passed"
        );
        assert!(body(r#"{"active":true,"exp":1799999971}"#, &[]).is_ok());
        assert_eq!(
            refused(r#"{"active":true,"nbf":1800000031}"#, &[]),
            Some(Refusal::NotYetValid)
        );
        assert!(body(r#"{"active":true,"aud":"api://edge"}"#, &["api://edge"]).is_ok());
    }

    #[test]
    fn the_status_says_down_refused_or_nonsense() {
        let i = issuer(&[]);
        let ok = r#"{"active":true}"#;
        assert!(judge(&answer(Some(200), ok), &i, NOW).is_ok());
        for down in [None, Some(500), Some(503), Some(429)] {
            assert!(
                matches!(
                    judge(&answer(down, ok), &i, NOW),
                    Err(Failure::Unavailable(_))
                ),
                "{down:?}"
            );
        }
        for refused in [401, 403] {
            assert_eq!(
                judge(&answer(Some(refused), ok), &i, NOW),
                Err(Failure::ClientRejected)
            );
        }
        for odd in [201, 302, 400, 404] {
            assert!(matches!(
                judge(&answer(Some(odd), ok), &i, NOW),
                Err(Failure::Nonsense(_))
            ));
        }
        let mut big = answer(Some(200), "");
        big.too_large = true;
        assert!(matches!(judge(&big, &i, NOW), Err(Failure::Nonsense(_))));
    }

    #[test]
    fn only_tokens_not_shaped_like_a_jws_are_introspected() {
        assert!(is_jwt_shaped("eyJh.eyJi.c2ln"));
        assert!(is_jwt_shaped("a-_.b.c"));
        for opaque in [
            "2YotnFZFEjr1zCsicMWpAA",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.",
            "a.b.c=",
            "a.b/c.d",
            "mF_9.B5f-4.1JqM+",
            "",
        ] {
            assert!(!is_jwt_shaped(opaque), "{opaque}");
        }
    }
}
