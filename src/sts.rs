//! The STS conversation: the token requests (RFC 8693 token exchange with or without an actor,
//! RFC 7523 JWT bearer, client credentials for the filter's own actor token), client
//! authentication (RFC 6749 §2.3, RFC 7523 §2.2), and the reading of answers (RFC 8693 §2.2,
//! RFC 6749 §5.2).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::assertion::{AssertionSigner, ASSERTION_TYPE};
use crate::cache::CacheKey;
use crate::host::{HttpAnswer, HttpCall};

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The RFC 7523 JWT bearer grant type.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

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
    /// `private_key_jwt`: a fresh signed assertion in the form of every call.
    PrivateKeyJwt(Box<AssertionSigner>),
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
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
            ClientAuth::None => "none",
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The token endpoint and how to authenticate there, shared by every request the filter makes.
#[derive(Clone)]
pub struct Endpoint {
    cluster: String,
    headers: Vec<(String, String)>,
    timeout_ms: u64,
    auth: ClientAuth,
    client_id: Option<String>,
    authority: String,
    token_path: String,
}

/// Shows where and how, never the credentials (the headers hold the Basic secret).
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("token_path", &self.token_path)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A request could not be built: the host gave no randomness for the assertion's `jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRandomness;

impl Endpoint {
    /// The token endpoint at `authority` + `token_path` through `cluster`.
    pub fn new(
        cluster: &str,
        authority: &str,
        token_path: &str,
        timeout_ms: u64,
        client_id: Option<String>,
        auth: ClientAuth,
    ) -> Self {
        let mut headers = vec![
            (":method".to_string(), "POST".to_string()),
            (":path".to_string(), token_path.to_string()),
            (":authority".to_string(), authority.to_string()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        if let ClientAuth::Basic { header } = &auth {
            headers.push(("authorization".to_string(), header.clone()));
        }
        Endpoint {
            cluster: cluster.to_string(),
            headers,
            timeout_ms,
            auth,
            client_id,
            authority: authority.to_string(),
            token_path: token_path.to_string(),
        }
    }

    /// The client authentication in use.
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The filter's client id.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// Adds the client's credentials where the method puts them in the body.
    fn append_credentials(&self, form: &mut form_urlencoded::Serializer<'static, String>) {
        match (&self.auth, &self.client_id) {
            (ClientAuth::Post { id, secret }, _) => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            (ClientAuth::None, Some(id)) => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
    }

    /// Feeds who asks, and where, into a cache key: they shape the minted token too.
    fn feed_identity(&self, key: &mut Sha256) {
        feed(key, "client");
        feed(key, self.client_id.as_deref().unwrap_or(""));
        feed(key, &self.authority);
        feed(key, &self.token_path);
    }

    /// The call for a finished form body, with a fresh client assertion for `private_key_jwt`.
    fn call(&self, mut body: String, now_s: u64) -> Result<HttpCall, NoRandomness> {
        if let ClientAuth::PrivateKeyJwt(signer) = &self.auth {
            let assertion = signer.assertion(now_s).map_err(|_| NoRandomness)?;
            body = form_urlencoded::Serializer::for_suffix(body, 0)
                .append_pair("client_assertion_type", ASSERTION_TYPE)
                .append_pair("client_assertion", &assertion)
                .finish();
        }
        Ok(HttpCall {
            cluster: self.cluster.clone(),
            headers: self.headers.clone(),
            body,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// Which grant an exchange profile sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693 token exchange.
    TokenExchange,
    /// RFC 7523 JWT bearer: the subject JWT is the `assertion`.
    JwtBearer,
}

/// Where a delegation's actor token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorSource {
    /// The filter's own token from a client-credentials grant: index into
    /// [`crate::config::Config::actors`].
    ClientCredentials(usize),
    /// A token the calling workload sends in this (lower-case) header.
    Header(String),
}

/// The actor of a delegation profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Its source.
    pub source: ActorSource,
    /// `actor_token_type` sent with it.
    pub token_type: String,
}

/// What an exchange profile asks for, as the configuration said it.
#[derive(Debug, Clone, Default)]
pub struct ExchangeSpec {
    /// `audience` values.
    pub audience: Vec<String>,
    /// `resource` values.
    pub resource: Vec<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `requested_token_type`.
    pub requested_token_type: Option<String>,
    /// Further form parameters.
    pub extra_params: BTreeMap<String, String>,
}

/// One set of exchange parameters (the default, or a route's overrides), with everything that
/// does not depend on the subject token prepared once at configuration time.
#[derive(Clone)]
pub struct ExchangeProfile {
    /// The grant sent.
    pub grant: Grant,
    /// `requested_token_type`, sent only when set; the answer's `issued_token_type` must match.
    pub requested_token_type: Option<String>,
    /// The actor, for delegation; `None` is impersonation.
    pub actor: Option<Actor>,
    /// Check that a minted JWT's `act.sub` names the actor.
    pub expect_act: bool,
    /// Refuse a delegation whose actor a verified subject token's `may_act` does not name
    /// (RFC 8693 §4.4); on by default.
    pub enforce_may_act: bool,
    /// The form without the subject and actor.
    form_prefix: String,
    /// SHA-256 state fed with every parameter that shapes the minted token except the subject
    /// (and a header-sourced actor).
    key_prefix: Sha256,
}

impl std::fmt::Debug for ExchangeProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The form may hold the client secret (client_secret_post): never shown.
        f.debug_struct("ExchangeProfile")
            .field("grant", &self.grant)
            .field("actor", &self.actor)
            .field("requested_token_type", &self.requested_token_type)
            .finish_non_exhaustive()
    }
}

/// Feeds one field into a key hash, length-prefixed so that no two field lists collide.
fn feed(h: &mut Sha256, field: &str) {
    h.update((field.len() as u64).to_be_bytes());
    h.update(field.as_bytes());
}

impl ExchangeProfile {
    /// Prepares the form and key prefix of one exchange profile. `actor_key` is the cache key of
    /// a client-credentials actor (its identity shapes the minted token).
    pub fn new(
        endpoint: &Endpoint,
        subject_token_type: &str,
        grant: Grant,
        spec: ExchangeSpec,
        actor: Option<Actor>,
        actor_key: Option<&CacheKey>,
        expect_act: bool,
    ) -> Self {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut key = Sha256::new();
        let mut pair = |k: &str, v: &str| {
            form.append_pair(k, v);
            feed(&mut key, k);
            feed(&mut key, v);
        };
        match grant {
            Grant::TokenExchange => {
                pair("grant_type", TOKEN_EXCHANGE_GRANT);
                pair("subject_token_type", subject_token_type);
            }
            Grant::JwtBearer => pair("grant_type", JWT_BEARER_GRANT),
        }
        for a in &spec.audience {
            pair("audience", a);
        }
        for r in &spec.resource {
            pair("resource", r);
        }
        if let Some(s) = &spec.scope {
            pair("scope", s);
        }
        if let Some(t) = &spec.requested_token_type {
            pair("requested_token_type", t);
        }
        for (k, v) in &spec.extra_params {
            pair(k, v);
        }
        endpoint.append_credentials(&mut form);
        endpoint.feed_identity(&mut key);
        if let Some(actor) = &actor {
            feed(&mut key, "actor");
            feed(&mut key, &actor.token_type);
            match (&actor.source, actor_key) {
                (ActorSource::ClientCredentials(_), Some(k)) => key.update(k),
                (ActorSource::Header(h), _) => feed(&mut key, h),
                _ => {}
            }
        }
        if expect_act {
            // A token minted where `act` was not checked must not serve a route that checks it.
            feed(&mut key, "expect_act");
        }
        feed(&mut key, "subject");
        ExchangeProfile {
            grant,
            requested_token_type: spec.requested_token_type,
            actor,
            expect_act,
            enforce_may_act: true,
            form_prefix: form.finish(),
            key_prefix: key,
        }
    }

    /// The SHA-256 cache key of exchanging `subject` (with a header-sourced `actor` token, which
    /// is part of the key) with this profile.
    pub fn cache_key(&self, subject: &str, header_actor: Option<&str>) -> CacheKey {
        let mut h = self.key_prefix.clone();
        feed(&mut h, subject);
        if let Some(a) = header_actor {
            feed(&mut h, a);
        }
        h.finalize().into()
    }

    /// The token request for `subject`, with `actor` (token) when delegating.
    pub fn request(
        &self,
        endpoint: &Endpoint,
        subject: &str,
        actor: Option<&str>,
        now_s: u64,
    ) -> Result<HttpCall, NoRandomness> {
        let mut form = form_urlencoded::Serializer::for_suffix(self.form_prefix.clone(), 0);
        match self.grant {
            Grant::TokenExchange => form.append_pair("subject_token", subject),
            Grant::JwtBearer => form.append_pair("assertion", subject),
        };
        if let (Some(token), Some(a)) = (actor, &self.actor) {
            form.append_pair("actor_token", token);
            form.append_pair("actor_token_type", &a.token_type);
        }
        endpoint.call(form.finish(), now_s)
    }

    /// Whether an answer must carry `issued_token_type` (RFC 8693 answers do, RFC 6749 ones not).
    pub fn expects_issued_type(&self) -> bool {
        self.grant == Grant::TokenExchange
    }
}

/// The filter's own client-credentials request for an actor token.
#[derive(Clone)]
pub struct ActorProfile {
    /// Cache key of the actor token: the client, the endpoint, scope and audience.
    pub key: CacheKey,
    form: String,
}

/// Never shows the form: it may hold the client secret.
impl std::fmt::Debug for ActorProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorProfile").finish_non_exhaustive()
    }
}

impl ActorProfile {
    /// Prepares a client-credentials request with `scope` and `audience`.
    pub fn new(endpoint: &Endpoint, scope: Option<&str>, audience: &[String]) -> Self {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut key = Sha256::new();
        feed(&mut key, "client_credentials");
        endpoint.feed_identity(&mut key);
        form.append_pair("grant_type", "client_credentials");
        if let Some(s) = scope {
            form.append_pair("scope", s);
            feed(&mut key, "scope");
            feed(&mut key, s);
        }
        for a in audience {
            form.append_pair("audience", a);
            feed(&mut key, "audience");
            feed(&mut key, a);
        }
        endpoint.append_credentials(&mut form);
        ActorProfile {
            key: key.finalize().into(),
            form: form.finish(),
        }
    }

    /// The client-credentials request.
    pub fn request(&self, endpoint: &Endpoint, now_s: u64) -> Result<HttpCall, NoRandomness> {
        endpoint.call(self.form.clone(), now_s)
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
    match r.token_type.as_ref().and_then(|v| v.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        _ => return Err(StsFailure::BadAnswer("token_type is not Bearer")),
    }
    match (
        r.issued_token_type.as_ref().and_then(|v| v.as_str()),
        issued,
    ) {
        (_, IssuedType::NotExpected) => {}
        (None, IssuedType::Required(_)) => {
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
        let r = c.profiles[0]
            .request(&c.endpoint, "tok+en/=", None, 0)
            .unwrap();
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
        let r = c.profiles[0].request(&c.endpoint, "t", None, 0).unwrap();
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
        let r = c.profiles[0].request(&c.endpoint, "t", None, 0).unwrap();
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
        let k = a.profiles[0].cache_key("tok", None);
        assert_eq!(k, a.profiles[0].cache_key("tok", None));
        assert_ne!(k, a.profiles[0].cache_key("tok2", None));
        assert_ne!(k, b.profiles[0].cache_key("tok", None));
        assert_ne!(k, other_client.profiles[0].cache_key("tok", None));
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
            ab.profiles[0].cache_key("t", None),
            a_b.profiles[0].cache_key("t", None)
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
            IssuedType::Required(None),
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
            IssuedType::Required(Some(ATT)),
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

    fn names(f: &[(String, String)]) -> Vec<&str> {
        f.iter().map(|(k, _)| k.as_str()).collect()
    }

    const PKJ: &str = r#""client_auth":"private_key_jwt","private_key":{"pem_env":"KEY","alg":"ES256","kid":"k1"}"#;

    fn pkj_config(exchange: &str) -> (Config, p256::ecdsa::VerifyingKey) {
        let (pem, public) = crate::assertion::tests::es256_pem();
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge",{PKJ}}},"exchange":{exchange}}}"#
        );
        let env = move |k: &str| (k == "KEY").then(|| pem.clone());
        (Config::parse(json.as_bytes(), &env).unwrap(), public)
    }

    #[test]
    fn delegation_sends_actor_token_and_type_exactly_when_it_has_one() {
        let c = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},
                 "exchange":{"actor":{"source":"header","header":"x-actor","token_type":"urn:ietf:params:oauth:token-type:jwt"}}}"#,
            &|_| None,
        )
        .unwrap();
        let r = c.profiles[0]
            .request(&c.endpoint, "subj", Some("act"), 0)
            .unwrap();
        let f = form(&r.body);
        assert_eq!(
            names(&f),
            vec![
                "grant_type",
                "subject_token_type",
                "subject_token",
                "actor_token",
                "actor_token_type"
            ]
        );
        assert_eq!(f[3].1, "act");
        assert_eq!(f[4].1, "urn:ietf:params:oauth:token-type:jwt");
        let r = c.profiles[0].request(&c.endpoint, "subj", None, 0).unwrap();
        assert_eq!(
            names(&form(&r.body)),
            vec!["grant_type", "subject_token_type", "subject_token"]
        );
        // the actor is part of the key
        assert_ne!(
            c.profiles[0].cache_key("subj", Some("a1")),
            c.profiles[0].cache_key("subj", Some("a2"))
        );
    }

    #[test]
    fn jwt_bearer_sends_the_subject_as_assertion() {
        let c = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},
                 "exchange":{"grant":"jwt_bearer","scope":"read"}}"#,
            &|_| None,
        )
        .unwrap();
        let r = c.profiles[0]
            .request(&c.endpoint, "a.b.c", None, 0)
            .unwrap();
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".into(), JWT_BEARER_GRANT.into()),
                ("scope".into(), "read".into()),
                ("assertion".into(), "a.b.c".into()),
            ]
        );
        assert!(!c.profiles[0].expects_issued_type());
    }

    #[test]
    fn client_credentials_for_the_actor_token() {
        let c = Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw","client_auth":"client_secret_post"},
                 "exchange":{"actor":{"source":"client_credentials","scope":"act","audience":"sts"}}}"#,
            &|_| None,
        )
        .unwrap();
        let r = c.actors[0].request(&c.endpoint, 0).unwrap();
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "act".into()),
                ("audience".into(), "sts".into()),
                ("client_id".into(), "edge".into()),
                ("client_secret".into(), "pw".into()),
            ]
        );
    }

    #[test]
    fn private_key_jwt_adds_a_verifiable_assertion_to_every_grant() {
        use jwt_compact::{AlgorithmExt, UntrustedToken};
        for exchange in [
            r#"{}"#,
            r#"{"grant":"jwt_bearer"}"#,
            r#"{"actor":{"source":"client_credentials"}}"#,
        ] {
            let (c, public) = pkj_config(exchange);
            let mut requests = vec![c.profiles[0]
                .request(&c.endpoint, "s", Some("a"), 1_000)
                .unwrap()];
            requests.extend(
                c.actors
                    .iter()
                    .map(|a| a.request(&c.endpoint, 1_000).unwrap()),
            );
            for r in requests {
                assert_eq!(
                    header(&r, "authorization"),
                    None,
                    "credentials in one place only"
                );
                let f = form(&r.body);
                let n = names(&f);
                assert_eq!(
                    &n[n.len() - 2..],
                    ["client_assertion_type", "client_assertion"],
                    "{exchange}"
                );
                assert!(!n.contains(&"client_secret") && !n.contains(&"client_id"));
                assert_eq!(f[f.len() - 2].1, crate::assertion::ASSERTION_TYPE);
                let untrusted = UntrustedToken::new(&f[f.len() - 1].1).unwrap();
                let token = jwt_compact::alg::Es256
                    .validator::<serde_json::Value>(&public)
                    .validate(&untrusted)
                    .unwrap();
                let claims = &token.claims().custom;
                assert_eq!(claims["iss"], "edge");
                assert_eq!(claims["sub"], "edge");
                assert_eq!(claims["aud"], "https://sts.local/token");
                assert_eq!(token.claims().expiration.unwrap().timestamp(), 1_060);
            }
        }
    }

    #[test]
    fn debug_output_of_a_config_never_shows_secrets() {
        for auth in ["client_secret_basic", "client_secret_post"] {
            let json = format!(
                r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"top-secret-value","client_auth":"{auth}"}},
                    "exchange":{{"actor":{{"source":"client_credentials"}}}}}}"#
            );
            let c = Config::parse(json.as_bytes(), &|_| None).unwrap();
            let shown = format!("{c:?}");
            assert!(
                !shown.contains("top-secret-value") && !shown.contains("Basic "),
                "{shown}"
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
}
