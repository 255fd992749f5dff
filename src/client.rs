//! The filter's requests to the STS (RFC 8693 token exchange with or without an actor, RFC 7523
//! JWT bearer, client credentials for its own actor token), each form and cache-key prefix
//! compiled once from the configuration, and how an answer to each is judged.

use sha2::{Digest, Sha256};

use crate::cache::CacheKey;
use crate::config::{self, CibaConfig, Config, ConfigError, ExchangeConfig, Grant, LoginHint};
use crate::endpoint::{feed, ClientAuth, Endpoint, NoRandomness};
use crate::host::{HttpAnswer, HttpCall};
use crate::sts::{self, IssuedType, Minted, StsFailure};
use crate::token::{self, MayAct};

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The RFC 7523 JWT bearer grant type.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The OpenID CIBA grant type.
pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";

/// Where a delegation's actor token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorSource {
    /// The filter's own token from a client-credentials grant: index into [`Client::actors`].
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
    /// (RFC 8693 §4.4).
    pub enforce_may_act: bool,
    /// Its routes' access policy (an index into the configuration's policies).
    pub policy: usize,
    /// The trusted issuer that introspects its opaque subject tokens.
    pub introspect: Option<usize>,
    /// The token service called (an index into [`Client::endpoints`]).
    pub service: usize,
    /// A chain's second hop, sent this hop's token.
    pub then: Option<Box<ExchangeProfile>>,
    /// The form without the subject and actor.
    form_prefix: String,
    /// SHA-256 state fed with every parameter that shapes the minted token except the subject
    /// (and a header-sourced actor).
    key_prefix: Sha256,
    /// For the ciba grant: the backchannel endpoint's path and the hint parameter's name.
    ciba: Option<(String, &'static str)>,
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

impl ExchangeProfile {
    /// Prepares the form and key prefix of one exchange. `actor` comes with the cache key of a
    /// client-credentials actor (its identity shapes the minted token). A second hop has no
    /// `subject_token_type` of its own (the first hop's `issued_token_type` is sent); a first
    /// hop's key includes its second hop's.
    pub fn new(
        endpoint: &Endpoint,
        subject_token_type: Option<&str>,
        spec: &ExchangeConfig,
        actor: Option<(Actor, Option<CacheKey>)>,
        ciba: Option<&CibaConfig>,
        then: Option<ExchangeProfile>,
    ) -> Self {
        let grant = spec.grant;
        let (actor, actor_key) = match actor {
            Some((a, k)) => (Some(a), k),
            None => (None, None),
        };
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
                if let Some(t) = subject_token_type {
                    pair("subject_token_type", t);
                }
            }
            Grant::JwtBearer => pair("grant_type", JWT_BEARER_GRANT),
            // The backchannel authentication request carries no grant (see below).
            Grant::Ciba => {}
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
        let ciba = match (grant, ciba) {
            (Grant::Ciba, Some(c)) => {
                if let Some(a) = &c.acr_values {
                    pair("acr_values", a);
                }
                if let Some(m) = &c.binding_message {
                    pair("binding_message", m);
                }
                if let Some(e) = c.requested_expiry_s {
                    pair("requested_expiry", &e.to_string());
                }
                let hint = match c.login_hint {
                    LoginHint::Claim(_) => "login_hint",
                    LoginHint::LoginHintToken => "login_hint_token",
                    LoginHint::IdTokenHint => "id_token_hint",
                };
                Some((c.path.clone(), hint))
            }
            _ => None,
        };
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
        if grant == Grant::Ciba {
            feed(&mut key, "ciba");
        }
        if spec.expect_act {
            // A token minted where `act` was not checked must not serve a route that checks it.
            feed(&mut key, "expect_act");
        }
        if let Some(t) = &then {
            feed(&mut key, "then");
            key.update(t.key_prefix.clone().finalize());
        }
        feed(&mut key, "subject");
        ExchangeProfile {
            grant,
            requested_token_type: spec.requested_token_type.clone(),
            actor,
            expect_act: spec.expect_act,
            enforce_may_act: spec.enforce_may_act,
            policy: spec.policy,
            introspect: spec.introspect,
            service: spec.service,
            then: then.map(Box::new),
            form_prefix: form.finish(),
            key_prefix: key,
            ciba,
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
            Grant::JwtBearer | Grant::Ciba => form.append_pair("assertion", subject),
        };
        if let (Some(token), Some(a)) = (actor, &self.actor) {
            form.append_pair("actor_token", token);
            form.append_pair("actor_token_type", &a.token_type);
        }
        endpoint.call(form.finish(), now_s)
    }

    /// A second hop's request: the first hop's `token` as the `assertion` (JWT bearer) or as
    /// the `subject_token` of type `issued_type` (token exchange).
    pub fn hop_request(
        &self,
        endpoint: &Endpoint,
        token: &str,
        issued_type: &str,
        now_s: u64,
    ) -> Result<HttpCall, NoRandomness> {
        let mut form = form_urlencoded::Serializer::for_suffix(self.form_prefix.clone(), 0);
        match self.grant {
            Grant::TokenExchange => {
                form.append_pair("subject_token", token);
                form.append_pair("subject_token_type", issued_type)
            }
            Grant::JwtBearer | Grant::Ciba => form.append_pair("assertion", token),
        };
        endpoint.call(form.finish(), now_s)
    }

    /// The backchannel authentication request (OpenID CIBA §7.1) naming the user by `hint`, with
    /// a `client_notification_token` in ping mode; `None` unless this is a ciba profile.
    pub fn ciba_request(
        &self,
        endpoint: &Endpoint,
        hint: &str,
        notification_token: Option<&str>,
        now_s: u64,
    ) -> Option<Result<HttpCall, NoRandomness>> {
        let (path, hint_name) = self.ciba.as_ref()?;
        let mut form = form_urlencoded::Serializer::for_suffix(self.form_prefix.clone(), 0);
        form.append_pair(hint_name, hint);
        if let Some(t) = notification_token {
            form.append_pair("client_notification_token", t);
        }
        Some(endpoint.call_to(path, form.finish(), now_s))
    }

    /// The token request for a pending consent (OpenID CIBA §10.1).
    pub fn ciba_poll(
        &self,
        endpoint: &Endpoint,
        auth_req_id: &str,
        now_s: u64,
    ) -> Result<HttpCall, NoRandomness> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", CIBA_GRANT);
        form.append_pair("auth_req_id", auth_req_id);
        endpoint.append_credentials(&mut form);
        endpoint.call(form.finish(), now_s)
    }

    /// The header a delegation's actor token comes in, when it comes from the caller.
    pub fn actor_header(&self) -> Option<&str> {
        match self.actor.as_ref().map(|a| &a.source) {
            Some(ActorSource::Header(h)) => Some(h),
            _ => None,
        }
    }

    /// The `sub` the minted token's `act` must name when the profile expects `act`: the actor
    /// token's `sub`, or for the filter's own (possibly opaque) token, its client id.
    pub fn actor_sub(&self, actor_token: Option<&str>, client_id: Option<&str>) -> Option<String> {
        if !self.expect_act {
            return None;
        }
        let sub = actor_token.and_then(token::unverified_sub);
        match self.actor.as_ref().map(|a| &a.source) {
            Some(ActorSource::ClientCredentials(_)) => {
                sub.or_else(|| client_id.map(str::to_string))
            }
            _ => sub,
        }
    }

    /// Whether a subject token's `may_act` lets this profile's actor act (RFC 8693 §4.4): a
    /// header actor as its token's `sub` and `iss` name it, the filter's own by its client id.
    pub fn may_act_permits(
        &self,
        m: &MayAct,
        actor: Option<&str>,
        client_id: Option<&str>,
    ) -> bool {
        match self.actor.as_ref().map(|a| &a.source) {
            None => true,
            Some(ActorSource::Header(_)) => {
                let (sub, iss) = actor.map(token::unverified_identity).unwrap_or_default();
                m.permits(sub.as_deref(), iss.as_deref())
            }
            Some(ActorSource::ClientCredentials(_)) => m.permits(client_id, None),
        }
    }

    /// Reads the answer to this profile's request: the minted token, whose `act.sub` must name
    /// `actor_sub` when the profile expects `act`.
    pub fn judge(
        &self,
        answer: &HttpAnswer,
        actor_sub: Option<&str>,
    ) -> Result<Minted, StsFailure> {
        // RFC 8693 answers carry `issued_token_type`, RFC 6749 ones (JWT bearer) do not.
        let issued = match self.grant {
            Grant::TokenExchange => IssuedType::Required(self.requested_token_type.as_deref()),
            Grant::JwtBearer | Grant::Ciba => IssuedType::NotExpected,
        };
        let minted = sts::parse_answer(answer, issued)?;
        if !self.expect_act {
            return Ok(minted);
        }
        match actor_sub {
            None => Err(StsFailure::BadAnswer(
                "the actor token names no sub to check act against",
            )),
            Some(want)
                if token::unverified_act_sub(&minted.access_token).as_deref() != Some(want) =>
            {
                Err(StsFailure::BadAnswer(
                    "minted token does not name the actor in act.sub",
                ))
            }
            Some(_) => Ok(minted),
        }
    }
}

/// The filter's own client-credentials request for an actor token.
#[derive(Clone)]
pub struct ActorProfile {
    /// Cache key of the actor token: the client, the endpoint, scope and audience.
    pub key: CacheKey,
    /// The token service asked (an index into [`Client::endpoints`]).
    pub service: usize,
    form: String,
}

/// Never shows the form: it may hold the client secret.
impl std::fmt::Debug for ActorProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorProfile").finish_non_exhaustive()
    }
}

impl ActorProfile {
    /// Prepares a client-credentials request with `scope` and `audience` at `service`.
    pub fn new(
        endpoint: &Endpoint,
        service: usize,
        scope: Option<&str>,
        audience: &[String],
    ) -> Self {
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
            service,
            form: form.finish(),
        }
    }

    /// The client-credentials request.
    pub fn request(&self, endpoint: &Endpoint, now_s: u64) -> Result<HttpCall, NoRandomness> {
        endpoint.call(self.form.clone(), now_s)
    }
}

/// Everything the filter sends to its token services, compiled from the configuration.
#[derive(Debug)]
pub struct Client {
    /// The token endpoints with the filter's client authentication at each: 0 is `sts`, then
    /// the `token_services` in order.
    pub endpoints: Vec<Endpoint>,
    /// One profile per [`Config::exchanges`] entry, same index.
    pub profiles: Vec<ExchangeProfile>,
    /// Client-credentials requests for the filter's own actor tokens (one per distinct service,
    /// scope and audience).
    pub actors: Vec<ActorProfile>,
}

impl Client {
    /// Compiles the endpoints, client authentication (parsing `private_key_jwt` keys), every
    /// exchange's form and key prefix, and the distinct actor-token requests.
    pub fn compile(config: &Config) -> Result<Client, ConfigError> {
        let mut endpoints = Vec::with_capacity(config.service_count());
        for i in 0..config.service_count() {
            let s = config.service(i);
            let key = match i {
                0 => "sts.private_key".to_string(),
                _ => format!("token_services.{}.private_key", config.service_name(i)),
            };
            let auth = ClientAuth::compile(&s.client_auth, &key)?;
            endpoints.push(Endpoint::new(
                &s.cluster,
                &s.authority,
                &s.token_path,
                s.timeout_ms,
                s.client_id.clone(),
                auth,
            ));
        }
        let mut client = Client {
            endpoints,
            profiles: Vec::with_capacity(config.exchanges.len()),
            actors: Vec::new(),
        };
        for e in &config.exchanges {
            let then = e
                .then
                .as_deref()
                .map(|t| client.profile(config, t, None, true));
            let first = client.profile(config, e, then, false);
            client.profiles.push(first);
        }
        Ok(client)
    }

    /// The endpoint of token service `service`.
    pub fn endpoint(&self, service: usize) -> &Endpoint {
        self.endpoints.get(service).unwrap_or(&self.endpoints[0])
    }

    /// The profile of exchange `e` (with its compiled second hop `then`); a `second_hop` sends
    /// the first hop's token type, not the configured subject's.
    fn profile(
        &mut self,
        config: &Config,
        e: &ExchangeConfig,
        then: Option<ExchangeProfile>,
        second_hop: bool,
    ) -> ExchangeProfile {
        let endpoint = self.endpoint(e.service).clone();
        let actor = e.actor.as_ref().map(|a| {
            let token_type = a.token_type.clone();
            match &a.source {
                config::ActorSource::ClientCredentials { scope, audience } => {
                    let p = ActorProfile::new(&endpoint, e.service, scope.as_deref(), audience);
                    let key = p.key;
                    let index = match self.actors.iter().position(|x| x.key == key) {
                        Some(i) => i,
                        None => {
                            self.actors.push(p);
                            self.actors.len() - 1
                        }
                    };
                    let source = ActorSource::ClientCredentials(index);
                    (Actor { source, token_type }, Some(key))
                }
                config::ActorSource::Header(h) => {
                    let source = ActorSource::Header(h.clone());
                    (Actor { source, token_type }, None)
                }
            }
        });
        let subject_type = (!second_hop).then_some(config.subject_token.token_type.as_str());
        ExchangeProfile::new(
            &endpoint,
            subject_type,
            e,
            actor,
            config.sts.ciba.as_ref(),
            then,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Client {
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"{extra}}}}}"#
        );
        compiled(&json, &|_| None)
    }

    fn compiled(json: &str, env: &dyn Fn(&str) -> Option<String>) -> Client {
        Client::compile(&Config::parse(json.as_bytes(), env).unwrap()).unwrap()
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
    fn impersonation_request_has_exactly_the_rfc8693_fields() {
        let c = config("");
        let r = c.profiles[0]
            .request(c.endpoint(0), "tok+en/=", None, 0)
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
        let c = compiled(json, &|_| None);
        let r = c.profiles[0].request(c.endpoint(0), "t", None, 0).unwrap();
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
        let c = compiled(json, &|_| None);
        let r = c.profiles[0].request(c.endpoint(0), "t", None, 0).unwrap();
        assert_eq!(header(&r, "authorization"), None);
        let f = form(&r.body);
        assert!(f.contains(&("client_id".into(), "edge".into())));
        assert!(!f.iter().any(|(k, _)| k == "client_secret"));
    }

    #[test]
    fn cache_keys_separate_every_shaping_input() {
        let a = config("");
        let b = compiled(
            r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":"x"}}"#,
            &|_| None,
        );
        let other_client = compiled(
            r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge2","client_secret":"pw"}}"#,
            &|_| None,
        );
        let k = a.profiles[0].cache_key("tok", None);
        assert_eq!(k, a.profiles[0].cache_key("tok", None));
        assert_ne!(k, a.profiles[0].cache_key("tok2", None));
        assert_ne!(k, b.profiles[0].cache_key("tok", None));
        assert_ne!(k, other_client.profiles[0].cache_key("tok", None));
        // Length prefixes: moving bytes between fields changes the key.
        let ab = compiled(
            r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":["ab"]}}"#,
            &|_| None,
        );
        let a_b = compiled(
            r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},"exchange":{"audience":["a","b"]}}"#,
            &|_| None,
        );
        assert_ne!(
            ab.profiles[0].cache_key("t", None),
            a_b.profiles[0].cache_key("t", None)
        );
    }

    fn names(f: &[(String, String)]) -> Vec<&str> {
        f.iter().map(|(k, _)| k.as_str()).collect()
    }

    const PKJ: &str = r#""client_auth":"private_key_jwt","private_key":{"pem_env":"KEY","alg":"ES256","kid":"k1"}"#;

    fn pkj_config(exchange: &str) -> (Client, p256::ecdsa::VerifyingKey) {
        let (pem, public) = crate::assertion::tests::es256_pem();
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge",{PKJ}}},"exchange":{exchange}}}"#
        );
        let env = move |k: &str| (k == "KEY").then(|| pem.clone());
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        (Client::compile(&c).unwrap(), public)
    }

    #[test]
    fn delegation_sends_actor_token_and_type_exactly_when_it_has_one() {
        let c = Client::compile(&Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},
                 "exchange":{"actor":{"source":"header","header":"x-actor","token_type":"urn:ietf:params:oauth:token-type:jwt"}}}"#,
            &|_| None,
        ).unwrap()).unwrap();
        let r = c.profiles[0]
            .request(c.endpoint(0), "subj", Some("act"), 0)
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
        let r = c.profiles[0]
            .request(c.endpoint(0), "subj", None, 0)
            .unwrap();
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
        let c = Client::compile(&Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"},
                 "exchange":{"grant":"jwt_bearer","scope":"read"}}"#,
            &|_| None,
        ).unwrap()).unwrap();
        let r = c.profiles[0]
            .request(c.endpoint(0), "a.b.c", None, 0)
            .unwrap();
        assert_eq!(
            form(&r.body),
            vec![
                ("grant_type".into(), JWT_BEARER_GRANT.into()),
                ("scope".into(), "read".into()),
                ("assertion".into(), "a.b.c".into()),
            ]
        );
        let unnamed = HttpAnswer {
            status: Some(200),
            body: br#"{"access_token":"t","token_type":"Bearer"}"#.to_vec(),
            too_large: false,
        };
        assert!(
            c.profiles[0].judge(&unnamed, None).is_ok(),
            "a JWT bearer answer needs no issued_token_type"
        );
    }

    #[test]
    fn client_credentials_for_the_actor_token() {
        let c = Client::compile(&Config::parse(
            br#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw","client_auth":"client_secret_post"},
                 "exchange":{"actor":{"source":"client_credentials","scope":"act","audience":"sts"}}}"#,
            &|_| None,
        ).unwrap()).unwrap();
        let r = c.actors[0].request(c.endpoint(0), 0).unwrap();
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
                .request(c.endpoint(0), "s", Some("a"), 1_000)
                .unwrap()];
            requests.extend(
                c.actors
                    .iter()
                    .map(|a| a.request(c.endpoint(0), 1_000).unwrap()),
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
            let config = Config::parse(json.as_bytes(), &|_| None).unwrap();
            let c = Client::compile(&config).unwrap();
            let shown = format!("{config:?} {c:?}");
            assert!(
                !shown.contains("top-secret-value") && !shown.contains("Basic "),
                "{shown}"
            );
        }
    }
}
