//! The STS conversation: the RFC 8693 token request (form and client authentication) and the
//! reading of its answer (RFC 8693 §2.2, RFC 6749 §5.2).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{StsConfig, SubjectTokenConfig};
use crate::host::{HttpAnswer, HttpCall};

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// How the filter authenticates to the STS (RFC 6749 §2.3). Credentials go in one place only.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: the ready `Authorization` header value.
    Basic {
        /// `Basic base64(urlenc(id) ":" urlenc(secret))`.
        header: String,
    },
    /// `client_secret_post`: id and secret in the form.
    Post {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
    /// No client authentication (a public client; its id, if any, goes in the form).
    None,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ClientAuth {
    /// `client_secret_basic` with id and secret each form-urlencoded before base64
    /// (RFC 6749 §2.3.1).
    pub fn basic(id: &str, secret: &str) -> Self {
        let pair = format!("{}:{}", urlencode(id), urlencode(secret));
        ClientAuth::Basic {
            header: format!("Basic {}", STANDARD.encode(pair)),
        }
    }

    /// The method's name as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::Basic { .. } => "client_secret_basic",
            ClientAuth::Post { .. } => "client_secret_post",
            ClientAuth::None => "none",
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One set of exchange parameters (the default, or a route's overrides), with everything that
/// does not depend on the subject token prepared once at configuration time.
#[derive(Clone)]
pub struct ExchangeProfile {
    /// `audience` values.
    pub audience: Vec<String>,
    /// `resource` values.
    pub resource: Vec<String>,
    /// `scope`, if any.
    pub scope: Option<String>,
    /// `requested_token_type`, sent only when set; the answer's `issued_token_type` must match.
    pub requested_token_type: Option<String>,
    /// The form without `subject_token`.
    form_prefix: String,
    /// Headers of the call.
    headers: Vec<(String, String)>,
    /// Cluster of the call.
    cluster: String,
    /// Timeout of the call.
    timeout_ms: u64,
    /// SHA-256 state fed with every parameter that shapes the minted token except the subject.
    key_prefix: Sha256,
}

impl std::fmt::Debug for ExchangeProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeProfile")
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .finish_non_exhaustive()
    }
}

/// Feeds one field into the key hash, length-prefixed so that no two field lists collide.
fn feed(h: &mut Sha256, field: &str) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field.as_bytes());
}

impl ExchangeProfile {
    /// Prepares the form, headers and key prefix of one exchange profile.
    pub fn new(
        sts: &StsConfig,
        subject: &SubjectTokenConfig,
        audience: Vec<String>,
        resource: Vec<String>,
        scope: Option<String>,
        requested_token_type: Option<String>,
        extra_params: BTreeMap<String, String>,
    ) -> Self {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut key = Sha256::new();
        let mut pair = |k: &str, v: &str| {
            form.append_pair(k, v);
            feed(&mut key, k);
            feed(&mut key, v);
        };
        pair("grant_type", TOKEN_EXCHANGE_GRANT);
        pair("subject_token_type", &subject.token_type);
        for a in &audience {
            pair("audience", a);
        }
        for r in &resource {
            pair("resource", r);
        }
        if let Some(s) = &scope {
            pair("scope", s);
        }
        if let Some(t) = &requested_token_type {
            pair("requested_token_type", t);
        }
        for (k, v) in &extra_params {
            pair(k, v);
        }
        match (&sts.client_auth, &sts.client_id) {
            (ClientAuth::Post { id, secret }, _) => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            (ClientAuth::None, Some(id)) => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
        // Who asks, and where, shapes the minted token too.
        feed(&mut key, "client");
        feed(&mut key, sts.client_id.as_deref().unwrap_or(""));
        feed(&mut key, &sts.authority);
        feed(&mut key, &sts.token_path);
        feed(&mut key, "subject_token");

        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), sts.token_path.clone()),
            (":authority".to_string(), sts.authority.clone()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        if let ClientAuth::Basic { header } = &sts.client_auth {
            headers.push(("authorization".to_string(), header.clone()));
        }
        ExchangeProfile {
            audience,
            resource,
            scope,
            requested_token_type,
            form_prefix: form.finish(),
            headers,
            cluster: sts.cluster.clone(),
            timeout_ms: sts.timeout_ms,
            key_prefix: key,
        }
    }

    /// The SHA-256 cache key of exchanging `subject` with this profile.
    pub fn cache_key(&self, subject: &str) -> [u8; 32] {
        let mut h = self.key_prefix.clone();
        feed(&mut h, subject);
        h.finalize().into()
    }

    /// The token request for `subject`.
    pub fn request(&self, subject: &str) -> HttpCall {
        let body = form_urlencoded::Serializer::for_suffix(self.form_prefix.clone(), 0)
            .append_pair("subject_token", subject)
            .finish();
        HttpCall {
            cluster: self.cluster.clone(),
            headers: self.headers.clone(),
            body,
            timeout_ms: self.timeout_ms,
        }
    }
}

/// A token the STS minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The new access token.
    pub access_token: String,
    /// Lifetime in seconds, if the STS said.
    pub expires_in: Option<u64>,
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
}

/// Reads an STS answer. `requested` is the `requested_token_type` that was sent, if any.
pub fn parse_answer(answer: &HttpAnswer, requested: Option<&str>) -> Result<Minted, StsFailure> {
    let status = answer.status.ok_or(StsFailure::Unavailable(
        "token service unreachable or timed out",
    ))?;
    if status >= 500 || status == 429 {
        return Err(StsFailure::Unavailable("token service unavailable"));
    }
    if answer.too_large {
        return Err(StsFailure::BadAnswer("token service answer too large"));
    }
    match status {
        200 => parse_success(&answer.body, requested),
        400 | 401 => Err(parse_error(&answer.body)),
        _ => Err(StsFailure::BadAnswer(
            "unexpected status from token service",
        )),
    }
}

fn parse_success(body: &[u8], requested: Option<&str>) -> Result<Minted, StsFailure> {
    let r: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| StsFailure::BadAnswer("token service answer is not a JSON object"))?;
    let access_token = match r.access_token {
        Some(serde_json::Value::String(t)) if is_header_safe(&t) => t,
        _ => return Err(StsFailure::BadAnswer("no usable access_token in answer")),
    };
    match r.token_type.as_ref().and_then(|v| v.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        _ => return Err(StsFailure::BadAnswer("token_type is not Bearer")),
    }
    match (
        r.issued_token_type.as_ref().and_then(|v| v.as_str()),
        requested,
    ) {
        (None, _) => return Err(StsFailure::BadAnswer("issued_token_type missing")),
        (Some(issued), Some(asked)) if issued != asked => {
            return Err(StsFailure::BadAnswer(
                "issued_token_type differs from requested_token_type",
            ))
        }
        _ => {}
    }
    let expires_in = match r.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(StsFailure::BadAnswer(
            "expires_in is not a non-negative integer",
        ))?),
    };
    Ok(Minted {
        access_token,
        expires_in,
    })
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
        "temporarily_unavailable" | "server_error" => {
            StsFailure::Unavailable("token service unavailable")
        }
        _ => StsFailure::BadAnswer("token service answered an unknown error code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"{extra}}}}}"#
        );
        Config::parse(json.as_bytes(), &|_| None).unwrap()
    }

    fn form(body: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    fn header<'a>(r: &'a HttpCall, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 §2.3.1: "a:b+c%d é" must reach the server intact after form decoding.
        let ClientAuth::Basic { header } = ClientAuth::basic("id:x", "a:b+c%d é") else {
            unreachable!()
        };
        let b64 = header.strip_prefix("Basic ").unwrap();
        let raw = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(raw, "id%3Ax:a%3Ab%2Bc%25d+%C3%A9");
        let (id, secret) = raw.split_once(':').unwrap();
        let dec = |s: &str| form(&format!("v={s}")).remove(0).1;
        assert_eq!(dec(id), "id:x");
        assert_eq!(dec(secret), "a:b+c%d é");
    }

    #[test]
    fn impersonation_request_has_exactly_the_rfc8693_fields() {
        let c = config("");
        let r = c.profiles[0].request("tok+en/=");
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".into(), TOKEN_EXCHANGE_GRANT.into()),
                (
                    "subject_token_type".into(),
                    crate::config::ACCESS_TOKEN_TYPE.into()
                ),
                ("subject_token".into(), "tok+en/=".into()),
            ]
        );
        assert_eq!(header(&r, ":method"), Some("POST"));
        assert_eq!(header(&r, ":path"), Some("/token"));
        assert_eq!(header(&r, ":authority"), Some("sts.local"));
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(header(&r, "authorization").unwrap().starts_with("Basic "));
        assert_eq!(r.cluster, "sts");
        assert_eq!(r.timeout_ms, 2000);
    }

    #[test]
    fn client_secret_post_puts_credentials_in_the_form_only() {
        let json = r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"p w:+%","client_auth":"client_secret_post"},
                       "exchange":{"audience":["a 1","b"],"resource":["https://r/x"],"scope":"read write","requested_token_type":"urn:ietf:params:oauth:token-type:jwt","extra_params":{"tenant":"t&1"}}}"#;
        let c = Config::parse(json.as_bytes(), &|_| None).unwrap();
        let r = c.profiles[0].request("t");
        assert_eq!(header(&r, "authorization"), None);
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".into(), TOKEN_EXCHANGE_GRANT.into()),
                (
                    "subject_token_type".into(),
                    crate::config::ACCESS_TOKEN_TYPE.into()
                ),
                ("audience".into(), "a 1".into()),
                ("audience".into(), "b".into()),
                ("resource".into(), "https://r/x".into()),
                ("scope".into(), "read write".into()),
                (
                    "requested_token_type".into(),
                    "urn:ietf:params:oauth:token-type:jwt".into()
                ),
                ("tenant".into(), "t&1".into()),
                ("client_id".into(), "edge".into()),
                ("client_secret".into(), "p w:+%".into()),
                ("subject_token".into(), "t".into()),
            ]
        );
    }

    #[test]
    fn public_client_sends_its_id_and_no_secret() {
        let json = r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_auth":"none"}}"#;
        let c = Config::parse(json.as_bytes(), &|_| None).unwrap();
        let r = c.profiles[0].request("t");
        assert_eq!(header(&r, "authorization"), None);
        let f = form(&r.body);
        assert!(f.contains(&("client_id".into(), "edge".into())));
        assert!(!f.iter().any(|(k, _)| k == "client_secret"));
    }

    #[test]
    fn cache_keys_separate_every_shaping_input() {
        let a = config("");
        let b = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":"x"}}"#,
            &|_| None,
        )
        .unwrap();
        let other_client = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge2","client_secret":"pw"}}"#,
            &|_| None,
        )
        .unwrap();
        let k = a.profiles[0].cache_key("tok");
        assert_eq!(k, a.profiles[0].cache_key("tok"));
        assert_ne!(k, a.profiles[0].cache_key("tok2"));
        assert_ne!(k, b.profiles[0].cache_key("tok"));
        assert_ne!(k, other_client.profiles[0].cache_key("tok"));
        // Length prefixes: moving bytes between fields changes the key.
        let ab = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":["ab"]}}"#,
            &|_| None,
        )
        .unwrap();
        let a_b = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":["a","b"]}}"#,
            &|_| None,
        )
        .unwrap();
        assert_ne!(
            ab.profiles[0].cache_key("t"),
            a_b.profiles[0].cache_key("t")
        );
    }

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
            None,
        )
        .unwrap();
        assert_eq!(
            m,
            Minted {
                access_token: "new".into(),
                expires_in: Some(60)
            }
        );
        let m = parse_answer(
            &answer(
                200,
                &format!(
                    r#"{{"access_token":"new","token_type":"Bearer","issued_token_type":"{ATT}"}}"#
                ),
            ),
            Some(ATT),
        )
        .unwrap();
        assert_eq!(m.expires_in, None);
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
                None,
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
                answer(200, &ok(r#","expires_in":"60""#)),
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
            assert_eq!(parse_answer(&a, req), Err(want.clone()), "{a:?}");
        }
    }
}
