//! Reading the STS's answers (RFC 8693 §2.2, RFC 6749 §5.2): a minted token, or the row of the
//! error table the answer falls in.

use serde::Deserialize;

use crate::cache::{self, Cached, Rejection};
use crate::config::{CacheConfig, ACCESS_TOKEN_TYPE};
use crate::host::HttpAnswer;

/// A token the STS minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The new access token.
    pub access_token: String,
    /// Lifetime in seconds, if the STS said.
    pub expires_in: Option<u64>,
    /// `issued_token_type`, if the STS said (a chain's second hop sends it as the subject's).
    pub issued_token_type: Option<String>,
}

/// Why an exchange produced no token; each variant is one row of the error table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsFailure {
    /// The STS rejected the subject token (`invalid_request`, `invalid_grant`): 401.
    SubjectRejected(String),
    /// The STS refused this exchange (`invalid_target`, `invalid_scope`, …): 403.
    Forbidden(String),
    /// The STS rejected the filter's own credentials: 502.
    InvalidClient,
    /// The STS answered something the filter cannot use: 502.
    BadAnswer(&'static str),
    /// The STS could not be used: unreachable, timed out, 5xx, 429: 503.
    Unavailable(&'static str),
    /// The user must act at the identity provider first (`interaction_required`,
    /// `consent_required`, `login_required`, `account_selection_required`): 401 with that code,
    /// or with the claims challenge the STS sent (standard base64 of its JSON). Never
    /// remembered: the user can act and retry at once.
    Interaction {
        /// The OAuth error code.
        code: &'static str,
        /// The claims challenge, base64 of its JSON.
        claims: Option<String>,
    },
}

impl StsFailure {
    /// The rejection to remember (negative cache): only the subject's and the exchange's;
    /// outages, bad answers and the filter's own credentials are never remembered.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            StsFailure::SubjectRejected(code) => Some(Rejection::Subject(code.clone())),
            StsFailure::Forbidden(code) => Some(Rejection::Forbidden(code.clone())),
            _ => None,
        }
    }
}

/// In the words of the error table (docs/errors.md), for the log: the OAuth error code the STS sent, never a token.
impl std::fmt::Display for StsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StsFailure::SubjectRejected(code) => {
                write!(f, "the token service rejected the caller's token ({code})")
            }
            StsFailure::Forbidden(code) => {
                write!(f, "the token service refused the exchange ({code})")
            }
            StsFailure::InvalidClient => f.write_str(
                "the token service rejected the filter's own client credentials (invalid_client)",
            ),
            StsFailure::BadAnswer(why) => {
                write!(f, "the token service's answer is unusable: {why}")
            }
            StsFailure::Unavailable(why) => f.write_str(why),
            StsFailure::Interaction { code, claims } => write!(
                f,
                "the token service asks the user to act first ({code}{})",
                if claims.is_some() {
                    ", with a claims challenge"
                } else {
                    ""
                }
            ),
        }
    }
}

impl From<Rejection> for StsFailure {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Subject(code) => StsFailure::SubjectRejected(code),
            Rejection::Forbidden(code) => StsFailure::Forbidden(code),
        }
    }
}

/// What an exchange's outcome leaves in the cache, and until when (ms): a minted token by the
/// lifetime rules, a rejection of the subject or of the exchange for `negative_ttl_s`; nothing
/// for outages, bad answers or the filter's own credentials.
pub fn cache_entry(
    rules: &CacheConfig,
    outcome: &Result<Minted, StsFailure>,
    subject_exp: Option<u64>,
    actor_until_ms: Option<u64>,
    now: u64,
) -> Option<(Cached, u64)> {
    match outcome {
        Ok(m) => {
            let until =
                cache::token_expiry_ms(rules, m.expires_in, subject_exp, actor_until_ms, now)?;
            Some((Cached::Token(m.access_token.clone()), until))
        }
        Err(f) => {
            let rejection = f.rejection()?;
            let life = cache::rejection_lifetime_ms(rules, subject_exp, now)?;
            Some((Cached::Rejected(rejection), now.saturating_add(life)))
        }
    }
}

/// The STS's answer to a backchannel authentication request (OpenID CIBA §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backchannel {
    /// The request's id, to poll with; never logged.
    pub auth_req_id: String,
    /// Seconds until the request lapses.
    pub expires_in: u64,
    /// Seconds between polls (5 when the STS names none).
    pub interval: u64,
}

/// What a poll of a pending consent says (OpenID CIBA §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// The user approved: the token.
    Token(Minted),
    /// Not yet (`authorization_pending`).
    Pending,
    /// Not yet, and poll 5 s less often (`slow_down`).
    SlowDown,
    /// The user said no (`access_denied`).
    Denied,
    /// The request lapsed (`expired_token`).
    Expired,
    /// Anything else: the usual error table.
    Failed(StsFailure),
}

#[derive(Deserialize)]
struct BackchannelResponse {
    auth_req_id: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    interval: Option<serde_json::Value>,
}

/// Reads the answer to a backchannel authentication request.
pub fn parse_backchannel(answer: &HttpAnswer) -> Result<Backchannel, StsFailure> {
    match check_status(answer)? {
        200 => {}
        400 | 401 | 403 => return Err(parse_error(&answer.body)),
        _ => {
            return Err(StsFailure::BadAnswer(
                "unexpected status from token service",
            ))
        }
    }
    let r: BackchannelResponse = serde_json::from_slice(&answer.body)
        .map_err(|_| StsFailure::BadAnswer("backchannel answer is not a JSON object"))?;
    let auth_req_id = match r.auth_req_id {
        Some(serde_json::Value::String(id)) if is_header_safe(&id) => id,
        _ => return Err(StsFailure::BadAnswer("no usable auth_req_id in answer")),
    };
    let expires_in = r
        .expires_in
        .as_ref()
        .and_then(seconds)
        .filter(|e| *e > 0)
        .ok_or(StsFailure::BadAnswer(
            "backchannel answer without expires_in",
        ))?;
    let interval = match r.interval {
        None | Some(serde_json::Value::Null) => 5,
        Some(v) => seconds(&v).ok_or(StsFailure::BadAnswer("interval is not whole seconds"))?,
    };
    Ok(Backchannel {
        auth_req_id,
        expires_in,
        // Never faster than once a second, whatever the STS says.
        interval: interval.max(1),
    })
}

/// Reads the answer to a poll of a pending consent.
pub fn parse_poll(answer: &HttpAnswer) -> Poll {
    if answer.status == Some(400) || answer.status == Some(403) {
        if let Ok(e) = serde_json::from_slice::<ErrorResponse>(&answer.body) {
            match e.error.as_str() {
                "authorization_pending" => return Poll::Pending,
                "slow_down" => return Poll::SlowDown,
                "access_denied" => return Poll::Denied,
                "expired_token" => return Poll::Expired,
                _ => {}
            }
        }
    }
    match parse_answer(answer, IssuedType::NotExpected) {
        Ok(m) => Poll::Token(m),
        Err(f) => Poll::Failed(f),
    }
}

fn check_status(answer: &HttpAnswer) -> Result<u16, StsFailure> {
    let status = answer.status.ok_or(StsFailure::Unavailable(
        "token service unreachable or timed out",
    ))?;
    if status >= 500 || status == 429 {
        return Err(StsFailure::Unavailable("token service unavailable"));
    }
    if answer.too_large {
        return Err(StsFailure::BadAnswer("token service answer too large"));
    }
    Ok(status)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<serde_json::Value>,
    token_type: Option<serde_json::Value>,
    issued_token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    /// A claims challenge (OpenID Connect Core §5.5's request, as Microsoft Entra sends it with
    /// `interaction_required`): a JSON object, or one written as a JSON string.
    #[serde(default)]
    claims: Option<serde_json::Value>,
}

/// What an answer must say about the issued token type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuedType<'a> {
    /// RFC 8693: `issued_token_type` is required, and must equal this when one was requested.
    Required(Option<&'a str>),
    /// RFC 6749 answers (JWT bearer, client credentials) carry none.
    NotExpected,
}

/// Reads an STS answer.
pub fn parse_answer(answer: &HttpAnswer, issued: IssuedType<'_>) -> Result<Minted, StsFailure> {
    match check_status(answer)? {
        200 => parse_success(&answer.body, issued),
        400 | 401 => Err(parse_error(&answer.body)),
        _ => Err(StsFailure::BadAnswer(
            "unexpected status from token service",
        )),
    }
}

fn parse_success(body: &[u8], issued: IssuedType<'_>) -> Result<Minted, StsFailure> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| StsFailure::BadAnswer("token service answer is not a JSON object"))?;
    let access_token = match r.access_token {
        Some(serde_json::Value::String(t)) if is_header_safe(&t) => t,
        _ => return Err(StsFailure::BadAnswer("no usable access_token in answer")),
    };
    let issued_token_type = r.issued_token_type.as_ref().and_then(|v| v.as_str());
    // RFC 8693 §2.2.1: a token that is not an access token (a JWT grant, an ID-JAG, a
    // transaction token) may come with `N_A`.
    let not_access = matches!(issued, IssuedType::Required(Some(t)) if t != ACCESS_TOKEN_TYPE);
    match r.token_type.as_ref().and_then(|v| v.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some("N_A") if not_access => {}
        _ => return Err(StsFailure::BadAnswer("token_type is not Bearer")),
    }
    match (issued_token_type, issued) {
        (_, IssuedType::NotExpected) => {}
        // RFC 8693 §2.2.1 makes it required, but widely used servers omit it: with no type
        // asked for, the token is taken as an access token.
        (None, IssuedType::Required(None)) => {}
        (None, IssuedType::Required(Some(_))) => {
            return Err(StsFailure::BadAnswer("issued_token_type missing"))
        }
        (Some(issued), IssuedType::Required(Some(asked))) if issued != asked => {
            return Err(StsFailure::BadAnswer(
                "issued_token_type differs from requested_token_type",
            ))
        }
        _ => {}
    }
    let expires_in = match r.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(seconds(&v).ok_or(StsFailure::BadAnswer(
            "expires_in is not a non-negative integer",
        ))?),
    };
    Ok(Minted {
        access_token,
        expires_in,
        issued_token_type: issued_token_type.map(str::to_string),
    })
}

/// A non-negative whole number of seconds, as a JSON number or (as some servers send it) a
/// string of digits; anything else (negative, fractional, beyond `u64`) is `None`.
fn seconds(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// The error codes that ask the user to act (OpenID Connect Core §3.1.2.6).
const INTERACTION_CODES: [&str; 4] = [
    "interaction_required",
    "consent_required",
    "login_required",
    "account_selection_required",
];

/// The longest claims challenge passed on (its JSON text).
const MAX_CLAIMS_BYTES: usize = 4096;

/// A claims challenge as the client gets it: standard base64 of a JSON object's text (a JSON
/// string is read as the text of one); `None` for anything else, or one over 4 KiB.
fn claims_challenge(v: &serde_json::Value) -> Option<String> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let object = match v {
        serde_json::Value::String(text) => serde_json::from_str::<serde_json::Value>(text).ok()?,
        other => other.clone(),
    };
    let text = object.is_object().then(|| object.to_string())?;
    (text.len() <= MAX_CLAIMS_BYTES).then(|| STANDARD.encode(text))
}

/// A token that can be written into a header as is: visible ASCII, no spaces.
fn is_header_safe(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn parse_error(body: &[u8]) -> StsFailure {
    let Ok(e) = serde_json::from_slice::<ErrorResponse>(body) else {
        return StsFailure::BadAnswer("token service error without an OAuth error code");
    };
    match e.error.as_str() {
        "invalid_request" | "invalid_grant" => StsFailure::SubjectRejected(e.error),
        "invalid_target" | "unauthorized_client" | "invalid_scope" | "access_denied" => {
            StsFailure::Forbidden(e.error)
        }
        "invalid_client" => StsFailure::InvalidClient,
        "interaction_required"
        | "consent_required"
        | "login_required"
        | "account_selection_required" => StsFailure::Interaction {
            code: INTERACTION_CODES
                .iter()
                .find(|c| **c == e.error)
                .copied()
                .unwrap_or("interaction_required"),
            claims: e.claims.as_ref().and_then(claims_challenge),
        },
        "temporarily_unavailable" | "server_error" => {
            StsFailure::Unavailable("token service unavailable")
        }
        _ => StsFailure::BadAnswer("token service answered an unknown error code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> HttpAnswer {
        HttpAnswer {
            status: Some(status),
            body: body.as_bytes().to_vec(),
            too_large: false,
        }
    }

    const ATT: &str = "urn:ietf:params:oauth:token-type:access_token";

    #[test]
    fn good_answers_yield_a_token() {
        let m = parse_answer(
            &answer(200, &format!(r#"{{"access_token":"new","token_type":"bearer","issued_token_type":"{ATT}","expires_in":60,"refresh_token":"r"}}"#)),
            IssuedType::Required(None),
        )
        .unwrap();
        assert_eq!(
            m,
            Minted {
                access_token: "new".into(),
                expires_in: Some(60),
                issued_token_type: Some(ATT.into()),
            }
        );
        let m = parse_answer(
            &answer(
                200,
                &format!(
                    r#"{{"access_token":"new","token_type":"Bearer","issued_token_type":"{ATT}"}}"#
                ),
            ),
            IssuedType::Required(Some(ATT)),
        )
        .unwrap();
        assert_eq!(m.expires_in, None);
    }

    #[test]
    fn n_a_is_a_token_type_only_for_a_token_that_is_not_an_access_token() {
        const TXN: &str = "urn:ietf:params:oauth:token-type:txn_token";
        let body =
            format!(r#"{{"access_token":"t","token_type":"N_A","issued_token_type":"{TXN}"}}"#);
        let m = parse_answer(&answer(200, &body), IssuedType::Required(Some(TXN))).unwrap();
        assert_eq!(m.access_token, "t");
        assert_eq!(m.issued_token_type.as_deref(), Some(TXN));
        let body =
            format!(r#"{{"access_token":"t","token_type":"N_A","issued_token_type":"{ATT}"}}"#);
        for asked in [None, Some(ATT)] {
            assert_eq!(
                parse_answer(&answer(200, &body), IssuedType::Required(asked)),
                Err(StsFailure::BadAnswer("token_type is not Bearer")),
                "an access token is a bearer token"
            );
        }
        let body =
            format!(r#"{{"access_token":"t","token_type":"n_a","issued_token_type":"{TXN}"}}"#);
        assert!(parse_answer(&answer(200, &body), IssuedType::Required(Some(TXN))).is_err());
    }

    #[test]
    fn an_answer_without_issued_token_type_is_an_access_token_when_no_type_was_asked_for() {
        let body = r#"{"access_token":"plain","token_type":"Bearer","expires_in":60}"#;
        let m = parse_answer(&answer(200, body), IssuedType::Required(None)).unwrap();
        assert_eq!(m.access_token, "plain");
        for asked in [ATT, "urn:ietf:params:oauth:token-type:jwt"] {
            assert_eq!(
                parse_answer(&answer(200, body), IssuedType::Required(Some(asked))),
                Err(StsFailure::BadAnswer("issued_token_type missing")),
                "asked for {asked}"
            );
        }
    }

    #[test]
    fn an_sts_that_asks_the_user_to_act_is_a_401_with_its_code_or_its_claims_challenge() {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        for code in INTERACTION_CODES {
            let body = format!(r#"{{"error":"{code}","error_description":"AADSTS50079: enroll"}}"#);
            let got = parse_answer(&answer(400, &body), IssuedType::Required(None));
            assert_eq!(got, Err(StsFailure::Interaction { code, claims: None }));
            assert_eq!(got.unwrap_err().rejection(), None, "never remembered");
        }
        // Entra: `claims` as a JSON string, beside its own members.
        let challenge = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
        let body = serde_json::json!({"error": "interaction_required", "error_description": "AADSTS50079: x",
            "error_codes": [50079], "suberror": "basic_action", "claims": challenge}).to_string();
        let Err(StsFailure::Interaction {
            code,
            claims: Some(b64),
        }) = parse_answer(&answer(400, &body), IssuedType::Required(None))
        else {
            panic!("no claims challenge")
        };
        assert_eq!(code, "interaction_required");
        let decoded: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(
            decoded,
            serde_json::from_str::<serde_json::Value>(challenge).unwrap()
        );
        // An object works too; anything that is not one, or a huge one, is left out.
        let object = serde_json::json!({"error": "login_required", "claims": {"id_token": {"acr": {"essential": true}}}});
        assert!(matches!(
            parse_answer(
                &answer(400, &object.to_string()),
                IssuedType::Required(None)
            ),
            Err(StsFailure::Interaction {
                claims: Some(_),
                ..
            })
        ));
        let huge = "x".repeat(5000);
        for claims in [
            serde_json::json!("not json"),
            serde_json::json!([1]),
            serde_json::json!({ "a": huge }),
        ] {
            let body =
                serde_json::json!({"error": "interaction_required", "claims": claims}).to_string();
            assert_eq!(
                parse_answer(&answer(400, &body), IssuedType::Required(None)),
                Err(StsFailure::Interaction {
                    code: "interaction_required",
                    claims: None
                })
            );
        }
    }

    #[test]
    fn every_sts_answer_maps_to_its_row() {
        use StsFailure::*;
        let ok = |extra: &str| {
            format!(
                r#"{{"access_token":"new","token_type":"Bearer","issued_token_type":"{ATT}"{extra}}}"#
            )
        };
        let cases: Vec<(HttpAnswer, Option<&str>, StsFailure)> = vec![
            (
                HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
                None,
                Unavailable("token service unreachable or timed out"),
            ),
            (
                answer(500, "oops"),
                None,
                Unavailable("token service unavailable"),
            ),
            (
                answer(503, ""),
                None,
                Unavailable("token service unavailable"),
            ),
            (
                answer(429, ""),
                None,
                Unavailable("token service unavailable"),
            ),
            (
                answer(400, r#"{"error":"invalid_request"}"#),
                None,
                SubjectRejected("invalid_request".into()),
            ),
            (
                answer(400, r#"{"error":"invalid_grant","error_description":"x"}"#),
                None,
                SubjectRejected("invalid_grant".into()),
            ),
            (
                answer(400, r#"{"error":"invalid_target"}"#),
                None,
                Forbidden("invalid_target".into()),
            ),
            (
                answer(400, r#"{"error":"invalid_scope"}"#),
                None,
                Forbidden("invalid_scope".into()),
            ),
            (
                answer(400, r#"{"error":"unauthorized_client"}"#),
                None,
                Forbidden("unauthorized_client".into()),
            ),
            (
                answer(401, r#"{"error":"invalid_client"}"#),
                None,
                InvalidClient,
            ),
            (
                answer(400, r#"{"error":"temporarily_unavailable"}"#),
                None,
                Unavailable("token service unavailable"),
            ),
            (
                answer(400, r#"{"error":"unsupported_grant_type"}"#),
                None,
                BadAnswer("token service answered an unknown error code"),
            ),
            (
                answer(400, "<html>"),
                None,
                BadAnswer("token service error without an OAuth error code"),
            ),
            (
                answer(404, ""),
                None,
                BadAnswer("unexpected status from token service"),
            ),
            (
                answer(302, ""),
                None,
                BadAnswer("unexpected status from token service"),
            ),
            (
                answer(200, "garbage"),
                None,
                BadAnswer("token service answer is not a JSON object"),
            ),
            (
                answer(200, "[1]"),
                None,
                BadAnswer("token service answer is not a JSON object"),
            ),
            (
                answer(200, r#"{"token_type":"Bearer"}"#),
                None,
                BadAnswer("no usable access_token in answer"),
            ),
            (
                answer(200, r#"{"access_token":"","token_type":"Bearer"}"#),
                None,
                BadAnswer("no usable access_token in answer"),
            ),
            (
                answer(
                    200,
                    r#"{"access_token":"a\r\nx-evil: 1","token_type":"Bearer"}"#,
                ),
                None,
                BadAnswer("no usable access_token in answer"),
            ),
            (
                answer(200, r#"{"access_token":5,"token_type":"Bearer"}"#),
                None,
                BadAnswer("no usable access_token in answer"),
            ),
            (
                answer(
                    200,
                    &format!(
                        r#"{{"access_token":"a","token_type":"N_A","issued_token_type":"{ATT}"}}"#
                    ),
                ),
                None,
                BadAnswer("token_type is not Bearer"),
            ),
            (
                answer(
                    200,
                    &format!(r#"{{"access_token":"a","issued_token_type":"{ATT}"}}"#),
                ),
                None,
                BadAnswer("token_type is not Bearer"),
            ),
            (
                answer(200, r#"{"access_token":"a","token_type":"Bearer"}"#),
                Some("urn:ietf:params:oauth:token-type:jwt"),
                BadAnswer("issued_token_type missing"),
            ),
            (
                answer(200, &ok("")),
                Some("urn:ietf:params:oauth:token-type:jwt"),
                BadAnswer("issued_token_type differs from requested_token_type"),
            ),
            (
                answer(200, &ok(r#","expires_in":-1"#)),
                None,
                BadAnswer("expires_in is not a non-negative integer"),
            ),
            (
                answer(200, &ok(r#","expires_in":"sixty""#)),
                None,
                BadAnswer("expires_in is not a non-negative integer"),
            ),
            (
                HttpAnswer {
                    status: Some(200),
                    body: vec![],
                    too_large: true,
                },
                None,
                BadAnswer("token service answer too large"),
            ),
        ];
        for (a, req, want) in cases {
            assert_eq!(
                parse_answer(&a, IssuedType::Required(req)),
                Err(want.clone()),
                "{a:?}"
            );
        }
    }

    #[test]
    fn hostile_answers_are_refused_or_read_safely() {
        let answer = |body: String| HttpAnswer {
            status: Some(200),
            body: body.into_bytes(),
            too_large: false,
        };
        let with = |token: &str, expires: &str| {
            answer(format!(
                r#"{{"access_token":{token},"token_type":"Bearer","expires_in":{expires}}}"#
            ))
        };
        let parse = |a: &HttpAnswer| parse_answer(a, IssuedType::NotExpected);
        // Bytes that could split or smuggle a header never reach one.
        for token in [
            r#""a\r\nx-evil: 1""#,
            r#""a\nb""#,
            r#""a\u0000b""#,
            r#""a b""#,
            r#""a\tb""#,
            r#""a\u007fb""#,
            r#""tök""#,
            r#""""#,
            "42",
            "null",
        ] {
            assert!(
                matches!(parse(&with(token, "60")), Err(StsFailure::BadAnswer(_))),
                "{token}"
            );
        }
        // Two values for one field: which one a parser keeps is not something to guess.
        let dup =
            answer(r#"{"access_token":"a","access_token":"b","token_type":"Bearer"}"#.to_string());
        assert!(matches!(parse(&dup), Err(StsFailure::BadAnswer(_))));
        let dup = answer(
            r#"{"access_token":"a","token_type":"Bearer","expires_in":1,"expires_in":99999}"#
                .to_string(),
        );
        assert!(matches!(parse(&dup), Err(StsFailure::BadAnswer(_))));
        // expires_in: whole non-negative seconds, as a number or a string of digits.
        for (raw, want) in [
            ("0", Some(0)),
            ("3600", Some(3600)),
            (r#""3600""#, Some(3600)),
            ("18446744073709551615", Some(u64::MAX)),
            (r#""18446744073709551615""#, Some(u64::MAX)),
        ] {
            assert_eq!(
                parse(&with(r#""t""#, raw)).map(|m| m.expires_in),
                Ok(want),
                "{raw}"
            );
        }
        for raw in [
            "-1",
            "1.5",
            "1e3",
            r#""-1""#,
            r#""1.5""#,
            r#""""#,
            r#"" 60""#,
            r#""soon""#,
            "18446744073709551616",
            r#""18446744073709551616""#,
            "true",
            "[60]",
        ] {
            assert!(
                matches!(parse(&with(r#""t""#, raw)), Err(StsFailure::BadAnswer(_))),
                "{raw}"
            );
        }
    }

    #[test]
    fn only_rejections_of_the_subject_or_exchange_are_remembered() {
        for f in [
            StsFailure::SubjectRejected("invalid_grant".into()),
            StsFailure::Forbidden("invalid_target".into()),
        ] {
            let r = f.rejection().unwrap();
            assert_eq!(StsFailure::from(r), f);
        }
        assert_eq!(StsFailure::InvalidClient.rejection(), None);
        assert_eq!(StsFailure::Unavailable("x").rejection(), None);
        assert_eq!(StsFailure::BadAnswer("x").rejection(), None);
    }

    #[test]
    fn a_failure_reads_in_the_readme_words_for_the_log() {
        let all = [
            StsFailure::SubjectRejected("invalid_grant".into()),
            StsFailure::Forbidden("invalid_target".into()),
            StsFailure::InvalidClient,
            StsFailure::BadAnswer("token_type is not Bearer"),
            StsFailure::Unavailable("token service unavailable"),
        ];
        let said: Vec<String> = all.iter().map(|f| f.to_string()).collect();
        for (failure, text) in all.iter().zip(&said) {
            let rust = format!("{failure:?}");
            let variant = rust.split('(').next().unwrap_or("");
            assert!(!text.contains(variant), "{text} names {variant}");
            assert!(!text.contains('"'), "{text}");
        }
        assert!(said[0].contains("invalid_grant") && said[2].contains("invalid_client"));
        assert_eq!(said[4], "token service unavailable");
    }
}
