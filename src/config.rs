//! The configuration contract: the serde shape of the plugin's JSON and its validation into a
//! [`Config`] that the engine uses without further checks.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::assertion::{AssertionSigner, SigningKey};
use crate::jwks::{JwsAlg, KeySet};
use crate::sts::{
    Actor, ActorProfile, ActorSource, ClientAuth, Endpoint, ExchangeProfile, ExchangeSpec, Grant,
};

/// The RFC 8693 token type URI of an OAuth access token, the default subject token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Form parameters the filter writes itself; `extra_params` may not name them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "audience",
    "resource",
    "scope",
    "requested_token_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
];

/// Why a configuration was refused: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `sts.timeout_ms`.
    pub key: String,
    /// What is wrong, without echoing any secret value.
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// What to do with a request that carries no subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingToken {
    /// Answer 401 with a `WWW-Authenticate` challenge.
    #[default]
    Reject,
    /// Pass the request on untouched.
    Allow,
}

/// What to do when the STS cannot be reached, times out or answers 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStsUnavailable {
    /// Answer 503 (fail closed).
    #[default]
    Deny,
    /// Strip the caller's token and pass the request on (fail open).
    Allow,
}

/// Where the subject token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTokenConfig {
    /// Lower-case request header name.
    pub header: String,
    /// Scheme prefix, matched case-insensitively; empty for a raw token header.
    pub prefix: String,
    /// `subject_token_type` sent to the STS.
    pub token_type: String,
    /// Largest token accepted, in bytes.
    pub max_bytes: usize,
}

/// Where the minted token is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputConfig {
    /// Lower-case header that receives the minted token.
    pub header: String,
    /// Prefix written before the minted token.
    pub prefix: String,
    /// Header that receives the caller's original token, if any (a client-sent copy is removed).
    pub original_token_header: Option<String>,
}

/// Cache sizing and lifetime rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Number of slots in the shared-data table.
    pub max_entries: u32,
    /// Seconds taken off every lifetime so a token is never served close to its expiry.
    pub expiry_skew_s: u64,
    /// Lifetime used when the STS sends no `expires_in`.
    pub default_ttl_s: u64,
    /// How long an STS rejection of a subject token is remembered; 0 disables it.
    pub negative_ttl_s: u64,
}

/// The STS endpoint and the filter's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsConfig {
    /// Envoy cluster name of the STS.
    pub cluster: String,
    /// `:authority` of the call.
    pub authority: String,
    /// Path of the token endpoint.
    pub token_path: String,
}

/// The criteria of a route rule; every criterion given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// Lower-case authority; compared with and without the port of the request.
    pub authority: Option<String>,
    /// Path prefix.
    pub path_prefix: Option<String>,
    /// Upper-case methods.
    pub methods: Vec<String>,
}

/// What a matching route rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    /// Leave the request alone.
    Bypass,
    /// Exchange with the profile at this index of [`Config::profiles`].
    Exchange(usize),
}

/// One route rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// When the rule applies.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: RouteAction,
}

/// Where a trusted issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Given in the configuration.
    Inline(KeySet),
    /// Fetched from a cluster and refreshed.
    Remote(JwksUri),
}

/// A JWKS endpoint reached through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUri {
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority` of the fetch.
    pub authority: String,
    /// Path of the JWKS.
    pub path: String,
    /// Regular refresh period in seconds.
    pub refresh_s: u64,
    /// Fetch timeout in milliseconds.
    pub timeout_ms: u64,
}

/// An identity provider whose subject JWTs the filter accepts.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Exact `iss` value.
    pub issuer: String,
    /// If not empty, the token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Allowed `alg` values.
    pub algorithms: Vec<JwsAlg>,
    /// Clock leeway for `exp`, `nbf`, `iat`, in seconds.
    pub leeway_s: u64,
    /// The issuer's keys.
    pub keys: KeySource,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// STS endpoint settings.
    pub sts: StsConfig,
    /// The token endpoint with the filter's client authentication.
    pub endpoint: Endpoint,
    /// Client-credentials requests for the filter's own actor tokens.
    pub actors: Vec<ActorProfile>,
    /// Headers carrying callers' actor tokens: never forwarded upstream.
    pub actor_headers: Vec<String>,
    /// Subject token extraction.
    pub subject_token: SubjectTokenConfig,
    /// Issuers whose JWTs are accepted; empty: the STS alone judges tokens.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Exchange profiles; index 0 is the default exchange, the others belong to routes.
    pub profiles: Vec<ExchangeProfile>,
    /// Route rules, first match wins.
    pub routes: Vec<Route>,
    /// Minted token output.
    pub output: OutputConfig,
    /// Cache rules.
    pub cache: CacheConfig,
    /// Realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// Missing token policy.
    pub on_missing_token: OnMissingToken,
    /// STS outage policy.
    pub on_sts_unavailable: OnStsUnavailable,
}

// ---- serde shape -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sts: RawSts,
    #[serde(default)]
    subject_token: RawSubjectToken,
    #[serde(default)]
    trusted_issuers: Vec<RawIssuer>,
    #[serde(default)]
    exchange: RawExchange,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    output: RawOutput,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default)]
    on_missing_token: OnMissingToken,
    #[serde(default)]
    on_sts_unavailable: OnStsUnavailable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSts {
    cluster: String,
    authority: String,
    token_path: String,
    timeout_ms: Option<u64>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_env: Option<String>,
    client_auth: Option<String>,
    private_key: Option<RawPrivateKey>,
    ciba: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivateKey {
    pem: Option<String>,
    pem_env: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawActor {
    source: String,
    scope: Option<String>,
    audience: Option<OneOrMany>,
    header: Option<String>,
    token_type: Option<String>,
}

/// Tells a key set to `null` (`Some(None)`) from an absent key (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Option<Vec<String>>,
    algorithms: Vec<String>,
    leeway_s: Option<u64>,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<RawJwksUri>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwksUri {
    cluster: String,
    authority: String,
    path: String,
    refresh_s: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSubjectToken {
    header: Option<String>,
    prefix: Option<String>,
    token_type: Option<String>,
    max_bytes: Option<usize>,
}

/// A list that may also be written as one string.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    grant: Option<String>,
    audience: Option<OneOrMany>,
    resource: Option<OneOrMany>,
    scope: Option<String>,
    requested_token_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    actor: Option<Option<RawActor>>,
    expect_act: Option<bool>,
    enforce_may_act: Option<bool>,
    extra_params: Option<BTreeMap<String, String>>,
}

impl RawExchange {
    /// This exchange with every key the override sets replaced.
    fn overridden_by(&self, o: &RawExchange) -> RawExchange {
        RawExchange {
            grant: o.grant.clone().or_else(|| self.grant.clone()),
            audience: o.audience.clone().or_else(|| self.audience.clone()),
            resource: o.resource.clone().or_else(|| self.resource.clone()),
            scope: o.scope.clone().or_else(|| self.scope.clone()),
            requested_token_type: o
                .requested_token_type
                .clone()
                .or_else(|| self.requested_token_type.clone()),
            actor: o.actor.clone().or_else(|| self.actor.clone()),
            expect_act: o.expect_act.or(self.expect_act),
            enforce_may_act: o.enforce_may_act.or(self.enforce_may_act),
            extra_params: o.extra_params.clone().or_else(|| self.extra_params.clone()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    #[serde(default)]
    exchange: Option<RawExchange>,
    #[serde(default)]
    bypass: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    authority: Option<String>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    header: Option<String>,
    prefix: Option<String>,
    original_token_header: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_entries: Option<u32>,
    expiry_skew_s: Option<u64>,
    default_ttl_s: Option<u64>,
    negative_ttl_s: Option<u64>,
}

// ---- validation ----------------------------------------------------------------------------

impl Config {
    /// Parses and validates the plugin configuration. `env` resolves `*_env` keys (the VM's
    /// environment in Envoy).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let raw: RawConfig =
            serde_path_to_error::deserialize(&mut de).map_err(|e| serde_error(&e))?;
        validate(raw, env)
    }

    /// A one-line summary for the start-up log; it names no secret.
    pub fn summary(&self) -> String {
        format!(
            "sts={}{} via cluster {} auth={} routes={} cache.max_entries={} on_missing_token={:?} on_sts_unavailable={:?}",
            self.sts.authority,
            self.sts.token_path,
            self.sts.cluster,
            self.endpoint.auth().name(),
            self.routes.len(),
            self.cache.max_entries,
            self.on_missing_token,
            self.on_sts_unavailable,
        )
    }
}

/// Names the key serde complained about (its dotted path, e.g. `sts.timeout_ms`) and cuts the
/// offending value out of "invalid type/value" messages so that a misplaced secret is never logged.
fn serde_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let mut msg = e.inner().to_string();
    if msg.starts_with("invalid") {
        if let (Some(colon), Some(expected)) = (msg.find(':'), msg.find(", expected")) {
            if colon < expected {
                msg = format!("{}{}", &msg[..colon], &msg[expected..]);
            }
        }
    }
    let path = e.path().to_string();
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next());
    let key = match (path.as_str(), missing) {
        (".", Some(field)) => field.to_string(),
        (_, Some(field)) => format!("{path}.{field}"),
        (".", None) => "(document)".to_string(),
        _ => path,
    };
    ConfigError::new(key, msg)
}

fn not_yet(key: &str) -> ConfigError {
    ConfigError::new(key, "is not supported by this version of the filter")
}

fn validate(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let (sts, endpoint) = validate_sts(raw.sts, env)?;
    let subject_token = validate_subject(raw.subject_token)?;
    let mut actors = Vec::new();
    let mut actor_headers = Vec::new();
    let mut trusted_issuers = Vec::with_capacity(raw.trusted_issuers.len());
    for (i, r) in raw.trusted_issuers.into_iter().enumerate() {
        let issuer = validate_issuer(r, &format!("trusted_issuers[{i}]"))?;
        if trusted_issuers
            .iter()
            .any(|t: &TrustedIssuer| t.issuer == issuer.issuer)
        {
            return Err(ConfigError::new(
                format!("trusted_issuers[{i}].issuer"),
                "is listed twice",
            ));
        }
        trusted_issuers.push(issuer);
    }
    let output = validate_output(raw.output, &subject_token)?;
    let cache = validate_cache(raw.cache)?;

    let mut ctx = ExchangeContext {
        endpoint: &endpoint,
        subject: &subject_token,
        actors: &mut actors,
        actor_headers: &mut actor_headers,
    };
    let mut profiles = vec![validate_exchange(&raw.exchange, "exchange", &mut ctx)?];
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        let matcher = validate_match(r.matcher, &key)?;
        let action = match (r.bypass, r.exchange) {
            (true, Some(_)) => {
                return Err(ConfigError::new(
                    key,
                    "a rule either bypasses or overrides the exchange, not both",
                ))
            }
            (true, None) => RouteAction::Bypass,
            (false, None) => RouteAction::Exchange(0),
            (false, Some(o)) => {
                let merged = raw.exchange.overridden_by(&o);
                profiles.push(validate_exchange(
                    &merged,
                    &format!("{key}.exchange"),
                    &mut ctx,
                )?);
                RouteAction::Exchange(profiles.len() - 1)
            }
        };
        routes.push(Route { matcher, action });
    }

    let realm = raw.realm.unwrap_or_else(|| "token-exchange".to_string());
    if realm.is_empty()
        || realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(ConfigError::new(
            "realm",
            "must be non-empty, without quotes, backslashes or control characters",
        ));
    }

    Ok(Config {
        sts,
        endpoint,
        actors,
        actor_headers,
        subject_token,
        trusted_issuers,
        profiles,
        routes,
        output,
        cache,
        realm,
        on_missing_token: raw.on_missing_token,
        on_sts_unavailable: raw.on_sts_unavailable,
    })
}

fn validate_sts(
    s: RawSts,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(StsConfig, Endpoint), ConfigError> {
    if s.ciba.is_some() {
        return Err(not_yet("sts.ciba"));
    }
    non_empty(&s.cluster, "sts.cluster")?;
    non_empty(&s.authority, "sts.authority")?;
    if s.authority.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(ConfigError::new(
            "sts.authority",
            "must be a host[:port] without scheme or path",
        ));
    }
    if !s.token_path.starts_with('/')
        || s.token_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::new(
            "sts.token_path",
            "must start with '/' and hold no whitespace",
        ));
    }
    let timeout_ms = s.timeout_ms.unwrap_or(2000);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(ConfigError::new(
            "sts.timeout_ms",
            "must be between 1 and 60000",
        ));
    }

    let method = s.client_auth.as_deref().unwrap_or("client_secret_basic");
    let secret = match (s.client_secret, s.client_secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "sts.client_secret",
                "give client_secret or client_secret_env, not both",
            ))
        }
        (Some(v), None) => Some(v),
        (None, Some(var)) => match env(&var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(ConfigError::new(
                    "sts.client_secret_env",
                    format!("environment variable {} is not set in the VM", shown(&var)),
                ))
            }
        },
        (None, None) => None,
    };
    let client_id = s.client_id.filter(|id| !id.is_empty());
    if s.private_key.is_some() && method != "private_key_jwt" {
        return Err(ConfigError::new(
            "sts.private_key",
            "is only used with client_auth private_key_jwt",
        ));
    }
    let client_auth = match method {
        "none" => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    "sts.client_secret",
                    "must not be set when client_auth is none",
                ));
            }
            ClientAuth::None
        }
        "client_secret_basic" | "client_secret_post" => {
            let id = client_id.clone().ok_or_else(|| {
                ConfigError::new("sts.client_id", format!("is required for {method}"))
            })?;
            let secret = secret.ok_or_else(|| {
                ConfigError::new(
                    "sts.client_secret",
                    format!("client_secret or client_secret_env is required for {method}"),
                )
            })?;
            if method == "client_secret_basic" {
                ClientAuth::basic(&id, &secret)
            } else {
                ClientAuth::Post { id, secret }
            }
        }
        "private_key_jwt" => {
            if secret.is_some() {
                return Err(ConfigError::new(
                    "sts.client_secret",
                    "must not be set with private_key_jwt: credentials go in one place",
                ));
            }
            let id = client_id.clone().ok_or_else(|| {
                ConfigError::new("sts.client_id", "is required for private_key_jwt")
            })?;
            let pk = s.private_key.ok_or_else(|| {
                ConfigError::new("sts.private_key", "is required for private_key_jwt")
            })?;
            let pem = match (pk.pem, pk.pem_env) {
                (Some(p), None) => p,
                (None, Some(var)) => env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        "sts.private_key.pem_env",
                        format!("environment variable {} is not set in the VM", shown(&var)),
                    )
                })?,
                _ => {
                    return Err(ConfigError::new(
                        "sts.private_key",
                        "give exactly one of pem and pem_env",
                    ))
                }
            };
            let alg = pk.alg.unwrap_or_else(|| "ES256".to_string());
            let key = SigningKey::from_pem(&alg, &pem)
                .map_err(|why| ConfigError::new("sts.private_key", why))?;
            ClientAuth::PrivateKeyJwt(Box::new(AssertionSigner {
                client_id: id,
                audience: pk
                    .audience
                    .unwrap_or_else(|| format!("https://{}{}", s.authority, s.token_path)),
                kid: pk.kid,
                key,
            }))
        }
        other => {
            return Err(ConfigError::new(
                "sts.client_auth",
                format!(
                    "unknown method {}; use client_secret_basic, client_secret_post, private_key_jwt or none",
                    shown(other)
                ),
            ))
        }
    };
    let endpoint = Endpoint::new(
        &s.cluster,
        &s.authority,
        &s.token_path,
        timeout_ms,
        client_id,
        client_auth,
    );
    let sts = StsConfig {
        cluster: s.cluster,
        authority: s.authority,
        token_path: s.token_path,
    };
    Ok((sts, endpoint))
}

fn validate_issuer(r: RawIssuer, key: &str) -> Result<TrustedIssuer, ConfigError> {
    non_empty(&r.issuer, &format!("{key}.issuer"))?;
    // Compared byte for byte with a token's `iss`: white space would only ever fail to match.
    no_space_or_control(&r.issuer, &format!("{key}.issuer"))?;
    let audiences = r.audiences.unwrap_or_default();
    for a in &audiences {
        non_empty(a, &format!("{key}.audiences"))?;
    }
    if r.algorithms.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.algorithms"),
            "must list at least one algorithm",
        ));
    }
    let mut algorithms = Vec::with_capacity(r.algorithms.len());
    for name in &r.algorithms {
        let alg = JwsAlg::from_name(name).ok_or_else(|| {
            let why = if name.eq_ignore_ascii_case("none")
                || name.to_ascii_uppercase().starts_with("HS")
            {
                format!("{} is never accepted for subject tokens", shown(name))
            } else {
                format!(
                    "{} is not supported; use RS256/384/512, PS256/384/512, ES256 or EdDSA",
                    shown(name)
                )
            };
            ConfigError::new(format!("{key}.algorithms"), why)
        })?;
        algorithms.push(alg);
    }
    let leeway_s = r.leeway_s.unwrap_or(30);
    if leeway_s > 300 {
        return Err(ConfigError::new(
            format!("{key}.leeway_s"),
            "must be at most 300",
        ));
    }
    let keys = match (r.jwks, r.jwks_uri) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ConfigError::new(
                key,
                "give exactly one of jwks and jwks_uri",
            ))
        }
        (Some(jwks), None) => {
            let value = match jwks {
                serde_json::Value::String(text) => serde_json::from_str(&text)
                    .map_err(|_| ConfigError::new(format!("{key}.jwks"), "is not JSON"))?,
                other => other,
            };
            let set = KeySet::from_value(&value)
                .map_err(|e| ConfigError::new(format!("{key}.jwks"), e.to_string()))?;
            KeySource::Inline(set)
        }
        (None, Some(u)) => {
            let k = format!("{key}.jwks_uri");
            non_empty(&u.cluster, &format!("{k}.cluster"))?;
            non_empty(&u.authority, &format!("{k}.authority"))?;
            no_space_or_control(&u.authority, &format!("{k}.authority"))?;
            if !u.path.starts_with('/') {
                return Err(ConfigError::new(format!("{k}.path"), "must start with '/'"));
            }
            no_space_or_control(&u.path, &format!("{k}.path"))?;
            let refresh_s = u.refresh_s.unwrap_or(300);
            if !(10..=86_400).contains(&refresh_s) {
                return Err(ConfigError::new(
                    format!("{k}.refresh_s"),
                    "must be between 10 and 86400",
                ));
            }
            let timeout_ms = u.timeout_ms.unwrap_or(2000);
            if !(1..=60_000).contains(&timeout_ms) {
                return Err(ConfigError::new(
                    format!("{k}.timeout_ms"),
                    "must be between 1 and 60000",
                ));
            }
            KeySource::Remote(JwksUri {
                cluster: u.cluster,
                authority: u.authority,
                path: u.path,
                refresh_s,
                timeout_ms,
            })
        }
    };
    Ok(TrustedIssuer {
        issuer: r.issuer,
        audiences,
        algorithms,
        leeway_s,
        keys,
    })
}

fn validate_subject(s: RawSubjectToken) -> Result<SubjectTokenConfig, ConfigError> {
    let header = settable_header(
        s.header.as_deref().unwrap_or("authorization"),
        "subject_token.header",
    )?;
    let prefix = s.prefix.unwrap_or_else(|| "Bearer ".to_string());
    printable(&prefix, "subject_token.prefix")?;
    let token_type = s
        .token_type
        .unwrap_or_else(|| ACCESS_TOKEN_TYPE.to_string());
    uri(&token_type, "subject_token.token_type")?;
    let max_bytes = s.max_bytes.unwrap_or(8192);
    if !(16..=65_536).contains(&max_bytes) {
        return Err(ConfigError::new(
            "subject_token.max_bytes",
            "must be between 16 and 65536",
        ));
    }
    Ok(SubjectTokenConfig {
        header,
        prefix,
        token_type,
        max_bytes,
    })
}

fn validate_output(
    o: RawOutput,
    subject: &SubjectTokenConfig,
) -> Result<OutputConfig, ConfigError> {
    let header = settable_header(
        o.header.as_deref().unwrap_or("authorization"),
        "output.header",
    )?;
    let prefix = o.prefix.unwrap_or_else(|| "Bearer ".to_string());
    printable(&prefix, "output.prefix")?;
    let original_token_header = match o.original_token_header {
        None => None,
        Some(h) => {
            let h = settable_header(&h, "output.original_token_header")?;
            if h == header || h == subject.header {
                return Err(ConfigError::new(
                    "output.original_token_header",
                    "must differ from output.header and subject_token.header",
                ));
            }
            Some(h)
        }
    };
    Ok(OutputConfig {
        header,
        prefix,
        original_token_header,
    })
}

fn validate_cache(c: RawCache) -> Result<CacheConfig, ConfigError> {
    let max_entries = c.max_entries.unwrap_or(4096);
    if !(1..=1_000_000).contains(&max_entries) {
        return Err(ConfigError::new(
            "cache.max_entries",
            "must be between 1 and 1000000",
        ));
    }
    let day = 86_400;
    let check = |v: u64, key: &str| {
        if v > day {
            Err(ConfigError::new(key, "must be at most 86400 seconds"))
        } else {
            Ok(v)
        }
    };
    Ok(CacheConfig {
        max_entries,
        expiry_skew_s: check(c.expiry_skew_s.unwrap_or(30), "cache.expiry_skew_s")?,
        default_ttl_s: check(c.default_ttl_s.unwrap_or(300), "cache.default_ttl_s")?,
        negative_ttl_s: check(c.negative_ttl_s.unwrap_or(5), "cache.negative_ttl_s")?,
    })
}

/// What validating an exchange needs besides the exchange itself.
struct ExchangeContext<'a> {
    endpoint: &'a Endpoint,
    subject: &'a SubjectTokenConfig,
    actors: &'a mut Vec<ActorProfile>,
    actor_headers: &'a mut Vec<String>,
}

fn validate_exchange(
    e: &RawExchange,
    key: &str,
    ctx: &mut ExchangeContext<'_>,
) -> Result<ExchangeProfile, ConfigError> {
    let grant = match e.grant.as_deref() {
        None | Some("token_exchange") => Grant::TokenExchange,
        Some("jwt_bearer") => Grant::JwtBearer,
        Some("ciba") => return Err(not_yet(&format!("{key}.grant ciba"))),
        Some(other) => {
            return Err(ConfigError::new(
                format!("{key}.grant"),
                format!(
                    "unknown grant {}; use token_exchange or jwt_bearer",
                    shown(other)
                ),
            ))
        }
    };
    let audience = e
        .audience
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    for a in &audience {
        non_empty(a, &format!("{key}.audience"))?;
    }
    let resource = e
        .resource
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default();
    for r in &resource {
        uri(r, &format!("{key}.resource"))?;
        if r.contains('#') {
            return Err(ConfigError::new(
                format!("{key}.resource"),
                "must not contain a fragment",
            ));
        }
    }
    if let Some(scope) = &e.scope {
        scope_tokens(scope, &format!("{key}.scope"))?;
    }
    if let Some(t) = &e.requested_token_type {
        uri(t, &format!("{key}.requested_token_type"))?;
    }
    let extra = e.extra_params.clone().unwrap_or_default();
    for k in extra.keys() {
        non_empty(k, &format!("{key}.extra_params"))?;
        if RESERVED_PARAMS.contains(&k.as_str()) {
            return Err(ConfigError::new(
                format!("{key}.extra_params.{k}"),
                "is a parameter the filter sets itself",
            ));
        }
    }
    let raw_actor = e.actor.clone().flatten();
    let expect_act = e.expect_act.unwrap_or(false);
    if grant == Grant::JwtBearer {
        let conflict = [
            ("actor", raw_actor.is_some()),
            ("requested_token_type", e.requested_token_type.is_some()),
            ("audience", !audience.is_empty()),
            ("resource", !resource.is_empty()),
        ];
        if let Some((name, _)) = conflict.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                "is not part of the jwt_bearer grant (RFC 7523); use extra_params if the STS wants it",
            ));
        }
    }
    if expect_act && raw_actor.is_none() {
        return Err(ConfigError::new(
            format!("{key}.expect_act"),
            "needs an actor",
        ));
    }
    let (actor, actor_key) = match raw_actor {
        None => (None, None),
        Some(a) => {
            let (actor, actor_key) = validate_actor(a, &format!("{key}.actor"), ctx)?;
            (Some(actor), actor_key)
        }
    };
    let spec = ExchangeSpec {
        audience,
        resource,
        scope: e.scope.clone(),
        requested_token_type: e.requested_token_type.clone(),
        extra_params: extra,
    };
    let mut profile = ExchangeProfile::new(
        ctx.endpoint,
        &ctx.subject.token_type,
        grant,
        spec,
        actor,
        actor_key.as_ref(),
        expect_act,
    );
    profile.enforce_may_act = e.enforce_may_act.unwrap_or(true);
    Ok(profile)
}

fn validate_actor(
    a: RawActor,
    key: &str,
    ctx: &mut ExchangeContext<'_>,
) -> Result<(Actor, Option<crate::cache::CacheKey>), ConfigError> {
    let token_type = a
        .token_type
        .unwrap_or_else(|| ACCESS_TOKEN_TYPE.to_string());
    uri(&token_type, &format!("{key}.token_type"))?;
    match a.source.as_str() {
        "client_credentials" => {
            if a.header.is_some() {
                return Err(ConfigError::new(
                    format!("{key}.header"),
                    "is only for source header",
                ));
            }
            if let Some(scope) = &a.scope {
                scope_tokens(scope, &format!("{key}.scope"))?;
            }
            let audience = a.audience.map(OneOrMany::into_vec).unwrap_or_default();
            let profile = ActorProfile::new(ctx.endpoint, a.scope.as_deref(), &audience);
            let index = match ctx.actors.iter().position(|p| p.key == profile.key) {
                Some(i) => i,
                None => {
                    ctx.actors.push(profile);
                    ctx.actors.len() - 1
                }
            };
            let actor_key = ctx.actors[index].key;
            Ok((
                Actor {
                    source: ActorSource::ClientCredentials(index),
                    token_type,
                },
                Some(actor_key),
            ))
        }
        "header" => {
            if a.scope.is_some() || a.audience.is_some() {
                return Err(ConfigError::new(
                    key,
                    "scope and audience are only for source client_credentials",
                ));
            }
            let header = a.header.ok_or_else(|| {
                ConfigError::new(format!("{key}.header"), "is required for source header")
            })?;
            let header = settable_header(&header, &format!("{key}.header"))?;
            if header == ctx.subject.header || header.starts_with(':') {
                return Err(ConfigError::new(
                    format!("{key}.header"),
                    "must be a header of its own",
                ));
            }
            if !ctx.actor_headers.contains(&header) {
                ctx.actor_headers.push(header.clone());
            }
            Ok((
                Actor {
                    source: ActorSource::Header(header),
                    token_type,
                },
                None,
            ))
        }
        other => Err(ConfigError::new(
            format!("{key}.source"),
            format!(
                "unknown source {}; use client_credentials or header",
                shown(other)
            ),
        )),
    }
}

fn scope_tokens(scope: &str, key: &str) -> Result<(), ConfigError> {
    let ok = !scope.is_empty()
        && scope.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "must be space-separated scope tokens (RFC 6749 §3.3)",
        ))
    }
}

fn validate_match(m: RawMatch, key: &str) -> Result<RouteMatch, ConfigError> {
    if let Some(a) = &m.authority {
        non_empty(a, &format!("{key}.match.authority"))?;
    }
    if let Some(p) = &m.path_prefix {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                format!("{key}.match.path_prefix"),
                "must start with '/'",
            ));
        }
        if !crate::path::is_normal_prefix(p) {
            return Err(ConfigError::new(
                format!("{key}.match.path_prefix"),
                "must be a normalized path: no dot segments, percent-encoding, backslash, ';', '?', '#' or empty segment",
            ));
        }
    }
    let methods: Vec<String> = m
        .methods
        .unwrap_or_default()
        .into_iter()
        .map(|x| x.to_ascii_uppercase())
        .collect();
    if methods
        .iter()
        .any(|x| x.is_empty() || !x.bytes().all(is_tchar))
    {
        return Err(ConfigError::new(
            format!("{key}.match.methods"),
            "must be HTTP method names",
        ));
    }
    Ok(RouteMatch {
        authority: m.authority.map(|a| a.to_ascii_lowercase()),
        path_prefix: m.path_prefix,
        methods,
    })
}

/// A config value as an error line may show it: only a short word that cannot be a secret or
/// key material; anything else by its length alone.
fn shown(v: &str) -> String {
    let word = v.len() <= 24
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if word {
        format!("{v:?}")
    } else {
        format!("(a value of {} bytes)", v.len())
    }
}

/// Headers the filter must never set or remove: framing, connection management, the host.
const UNTOUCHABLE_HEADERS: [&str; 12] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "content-type",
];

/// A header name the filter may set or remove (see [`UNTOUCHABLE_HEADERS`]).
fn settable_header(v: &str, key: &str) -> Result<String, ConfigError> {
    let h = header_name(v, key)?;
    if h.starts_with(':') || UNTOUCHABLE_HEADERS.contains(&h.as_str()) {
        return Err(ConfigError::new(
            key,
            "must not be a pseudo-header, hop-by-hop, framing or host header",
        ));
    }
    Ok(h)
}

/// A host name or path part sent in a call: no white space, no control characters.
fn no_space_or_control(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(ConfigError::new(
            key,
            "must not contain white space or control characters",
        ))
    } else {
        Ok(())
    }
}

fn non_empty(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

fn printable(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::new(key, "must be printable ASCII"))
    }
}

/// An absolute URI in the loose sense RFC 8693 needs: a scheme, a colon, no whitespace.
fn uri(v: &str, key: &str) -> Result<(), ConfigError> {
    let scheme_ok = v.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if scheme_ok && !v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(ConfigError::new(key, "must be an absolute URI"))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(v: &str, key: &str) -> Result<String, ConfigError> {
    let lower = v.to_ascii_lowercase();
    if !lower.is_empty() && lower.bytes().all(is_tchar) {
        Ok(lower)
    } else {
        Err(ConfigError::new(key, "must be an HTTP header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sts::ActorSource;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json.as_bytes(), &no_env)
    }

    const MINIMAL: &str = r#"{"sts":{"cluster":"sts","authority":"sts.example.com","token_path":"/token","client_id":"edge","client_secret":"s3cret"}}"#;

    /// MINIMAL with `extra` spliced in as further top-level keys.
    fn with(extra: &str) -> String {
        format!("{},{extra}}}", &MINIMAL[..MINIMAL.len() - 1])
    }

    fn err_key(json: &str) -> String {
        parse(json).expect_err("config must be refused").key
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.profiles[0]
                .request(&c.endpoint, "t", None, 0)
                .unwrap()
                .timeout_ms,
            2000
        );
        assert_eq!(c.endpoint.auth().name(), "client_secret_basic");
        assert_eq!(c.subject_token.header, "authorization");
        assert_eq!(c.subject_token.prefix, "Bearer ");
        assert_eq!(c.subject_token.token_type, ACCESS_TOKEN_TYPE);
        assert_eq!(c.subject_token.max_bytes, 8192);
        assert_eq!(c.output.header, "authorization");
        assert_eq!(c.output.prefix, "Bearer ");
        assert_eq!(c.output.original_token_header, None);
        assert_eq!(
            c.cache,
            CacheConfig {
                max_entries: 4096,
                expiry_skew_s: 30,
                default_ttl_s: 300,
                negative_ttl_s: 5
            }
        );
        assert_eq!(c.on_missing_token, OnMissingToken::Reject);
        assert_eq!(c.on_sts_unavailable, OnStsUnavailable::Deny);
        assert_eq!(c.profiles.len(), 1);
        assert!(c.routes.is_empty());
        assert_eq!(c.realm, "token-exchange");
    }

    #[test]
    fn full_documented_example_is_accepted() {
        let c = parse(
            r#"{
            "sts": {"cluster":"sts","authority":"sts.example.com","token_path":"/oauth2/token","timeout_ms":1500,
                    "client_id":"edge-proxy","client_secret":"x","client_auth":"client_secret_post"},
            "subject_token": {"header":"Authorization","prefix":"Bearer ","token_type":"urn:ietf:params:oauth:token-type:jwt","max_bytes":4096},
            "exchange": {"grant":"token_exchange","audience":["orders-api"],"resource":["https://orders.internal/"],"scope":"orders:read",
                         "requested_token_type":null,"actor":null,"extra_params":{"k":"v"}},
            "routes": [
              {"match":{"authority":"orders.example.com","path_prefix":"/orders","methods":["get"]},"exchange":{"audience":["orders-api"],"scope":"orders:read"}},
              {"match":{"path_prefix":"/healthz"},"bypass":true}
            ],
            "output": {"header":"authorization","prefix":"Bearer ","original_token_header":"x-original-token"},
            "cache": {"max_entries":10,"expiry_skew_s":0,"default_ttl_s":60,"negative_ttl_s":0},
            "realm": "orders",
            "on_missing_token":"allow","on_sts_unavailable":"allow"
        }"#,
        )
        .unwrap();
        assert_eq!(c.subject_token.header, "authorization");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].action, RouteAction::Exchange(1));
        assert_eq!(c.routes[0].matcher.methods, vec!["GET".to_string()]);
        assert_eq!(c.routes[1].action, RouteAction::Bypass);
        assert_eq!(
            c.output.original_token_header.as_deref(),
            Some("x-original-token")
        );
        assert_eq!(c.on_sts_unavailable, OnStsUnavailable::Allow);
        assert_eq!(c.endpoint.auth().name(), "client_secret_post");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        assert_eq!(err_key(&with(r#""colour":"blue""#)), "colour");
        assert_eq!(
            err_key(&with(r#""routes":[{"match":{"path":"/"}}]"#)),
            "routes[0].match.path"
        );
        assert_eq!(
            err_key(
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none","tmeout_ms":5}}"#
            ),
            "sts.tmeout_ms"
        );
        assert_eq!(
            err_key(&with(r#""cache":{"max_entry":5}"#)),
            "cache.max_entry"
        );
    }

    #[test]
    fn missing_required_keys_are_refused() {
        assert_eq!(err_key("{}"), "sts");
        assert_eq!(
            err_key(r#"{"sts":{"cluster":"s","authority":"a"}}"#),
            "sts.token_path"
        );
        assert_eq!(
            err_key(r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t"}}"#),
            "sts.client_id"
        );
        assert_eq!(
            err_key(r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c"}}"#),
            "sts.client_secret"
        );
        assert_eq!(err_key("not json"), "(document)");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases = [
            (
                r#"{"sts":{"cluster":"","authority":"a","token_path":"/t","client_auth":"none"}}"#,
                "sts.cluster",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"https://a","token_path":"/t","client_auth":"none"}}"#,
                "sts.authority",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"t","client_auth":"none"}}"#,
                "sts.token_path",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none","timeout_ms":0}}"#,
                "sts.timeout_ms",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none","timeout_ms":60001}}"#,
                "sts.timeout_ms",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"mtls"}}"#,
                "sts.client_auth",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none","client_secret":"x"}}"#,
                "sts.client_secret",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x","client_secret_env":"E"}}"#,
                "sts.client_secret",
            ),
        ];
        for (json, key) in cases {
            assert_eq!(err_key(json), key, "{json}");
        }
        let cases = [
            (
                r#""subject_token":{"header":"bad header"}"#,
                "subject_token.header",
            ),
            (
                r#""subject_token":{"token_type":"access_token"}"#,
                "subject_token.token_type",
            ),
            (
                r#""subject_token":{"max_bytes":1}"#,
                "subject_token.max_bytes",
            ),
            (
                r#""subject_token":{"prefix":"Bearer\n"}"#,
                "subject_token.prefix",
            ),
            (r#""output":{"header":":path"}"#, "output.header"),
            (
                r#""output":{"original_token_header":"authorization"}"#,
                "output.original_token_header",
            ),
            (r#""cache":{"max_entries":0}"#, "cache.max_entries"),
            (r#""cache":{"default_ttl_s":90000}"#, "cache.default_ttl_s"),
            (r#""exchange":{"grant":"password"}"#, "exchange.grant"),
            (r#""exchange":{"audience":[""]}"#, "exchange.audience"),
            (r#""exchange":{"resource":["orders"]}"#, "exchange.resource"),
            (
                r#""exchange":{"resource":["https://o/#frag"]}"#,
                "exchange.resource",
            ),
            (r#""exchange":{"scope":"a  b"}"#, "exchange.scope"),
            (r#""exchange":{"scope":"a\"b"}"#, "exchange.scope"),
            (
                r#""exchange":{"requested_token_type":"jwt"}"#,
                "exchange.requested_token_type",
            ),
            (
                r#""exchange":{"extra_params":{"subject_token":"x"}}"#,
                "exchange.extra_params.subject_token",
            ),
            (
                r#""routes":[{"match":{"path_prefix":"x"}}]"#,
                "routes[0].match.path_prefix",
            ),
            (
                r#""routes":[{"match":{"methods":["G ET"]}}]"#,
                "routes[0].match.methods",
            ),
            (
                r#""routes":[{"bypass":true,"exchange":{"scope":"a"}}]"#,
                "routes[0]",
            ),
            (
                r#""routes":[{"exchange":{"scope":""}}]"#,
                "routes[0].exchange.scope",
            ),
            (r#""on_missing_token":"maybe""#, "on_missing_token"),
            (r#""cache":{"max_entries":-1}"#, "cache.max_entries"),
            (r#""realm":"a\"b""#, "realm"),
        ];
        for (extra, key) in cases {
            assert_eq!(err_key(&with(extra)), key, "{extra}");
        }
    }

    #[test]
    fn ciba_is_refused_not_ignored() {
        assert_eq!(
            err_key(&with(r#""exchange":{"grant":"ciba"}"#)),
            "exchange.grant ciba"
        );
        assert_eq!(
            err_key(
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none","ciba":{}}}"#
            ),
            "sts.ciba"
        );
    }

    #[test]
    fn actors_and_grants_are_validated() {
        let ok = with(
            r#""exchange":{"actor":{"source":"client_credentials","scope":"a b"},"expect_act":true},
            "routes":[{"match":{"path_prefix":"/imp"},"exchange":{"actor":null,"expect_act":false}},
                      {"match":{"path_prefix":"/hdr"},"exchange":{"actor":{"source":"header","header":"X-Actor"}}},
                      {"match":{"path_prefix":"/same"},"exchange":{"audience":"x"}}]"#,
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.actors.len(), 1, "one client-credentials actor, shared");
        assert!(c.profiles[0].actor.is_some());
        assert!(
            c.profiles[1].actor.is_none(),
            "a route turns delegation off with null"
        );
        assert_eq!(
            c.profiles[2].actor.as_ref().unwrap().source,
            ActorSource::Header("x-actor".into())
        );
        assert_eq!(c.actor_headers, vec!["x-actor".to_string()]);
        assert!(
            c.profiles[3].actor.is_some(),
            "an override without actor keeps the default's"
        );

        let cases = [
            (
                r#""exchange":{"grant":"jwt_bearer","actor":{"source":"client_credentials"}}"#,
                "exchange.actor",
            ),
            (
                r#""exchange":{"grant":"jwt_bearer","requested_token_type":"urn:x:y"}"#,
                "exchange.requested_token_type",
            ),
            (
                r#""exchange":{"grant":"jwt_bearer","audience":"a"}"#,
                "exchange.audience",
            ),
            (r#""exchange":{"grant":"saml"}"#, "exchange.grant"),
            (r#""exchange":{"expect_act":true}"#, "exchange.expect_act"),
            (
                r#""exchange":{"actor":{"source":"magic"}}"#,
                "exchange.actor.source",
            ),
            (
                r#""exchange":{"actor":{"source":"header"}}"#,
                "exchange.actor.header",
            ),
            (
                r#""exchange":{"actor":{"source":"header","header":"authorization"}}"#,
                "exchange.actor.header",
            ),
            (
                r#""exchange":{"actor":{"source":"header","header":"x","scope":"s"}}"#,
                "exchange.actor",
            ),
            (
                r#""exchange":{"actor":{"source":"client_credentials","header":"x"}}"#,
                "exchange.actor.header",
            ),
            (
                r#""exchange":{"actor":{"source":"client_credentials","token_type":"jwt"}}"#,
                "exchange.actor.token_type",
            ),
            (
                r#""exchange":{"actor":{"source":"client_credentials","colour":"red"}}"#,
                "exchange.actor.colour",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(err_key(&with(extra)), key, "{extra}");
        }
    }

    #[test]
    fn private_key_jwt_is_validated() {
        let (pem, _) = crate::assertion::tests::es256_pem();
        let env = |k: &str| (k == "KEY").then(|| pem.clone());
        let parse_env = |json: &str| Config::parse(json.as_bytes(), &env);
        let ok = r#"{"sts":{"cluster":"s","authority":"sts.local","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{"pem_env":"KEY"}}}"#;
        let c = parse_env(ok).unwrap();
        let ClientAuth::PrivateKeyJwt(signer) = c.endpoint.auth() else {
            panic!()
        };
        assert_eq!(
            signer.audience, "https://sts.local/t",
            "default audience: the token endpoint URL"
        );
        let cases = [
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt"}}"#,
                "sts.private_key",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_auth":"private_key_jwt","private_key":{"pem_env":"KEY"}}}"#,
                "sts.client_id",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{"pem_env":"NOPE"}}}"#,
                "sts.private_key.pem_env",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{"pem":"junk"}}}"#,
                "sts.private_key",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{"pem_env":"KEY","alg":"RS256"}}}"#,
                "sts.private_key",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","client_secret":"x","private_key":{"pem_env":"KEY"}}}"#,
                "sts.client_secret",
            ),
            (
                r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x","private_key":{"pem_env":"KEY"}}}"#,
                "sts.private_key",
            ),
        ];
        for (json, key) in cases {
            let e = parse_env(json).expect_err(json);
            assert_eq!(e.key, key, "{json}");
            assert!(
                !e.to_string().contains("PRIVATE KEY"),
                "never echoes the key"
            );
        }
    }

    #[test]
    fn trusted_issuers_are_validated() {
        let good = r#""trusted_issuers":[{"issuer":"https://idp","algorithms":["RS256","EdDSA"],"audiences":["api"],
            "jwks_uri":{"cluster":"idp","authority":"idp.local","path":"/jwks"}}]"#;
        let c = parse(&with(good)).unwrap();
        let t = &c.trusted_issuers[0];
        assert_eq!(t.algorithms, vec![JwsAlg::Rs256, JwsAlg::EdDsa]);
        assert_eq!(t.leeway_s, 30);
        let KeySource::Remote(u) = &t.keys else {
            panic!("remote keys expected")
        };
        assert_eq!((u.refresh_s, u.timeout_ms), (300, 2000));

        let ed = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k"}"#;
        let inline = format!(
            r#""trusted_issuers":[{{"issuer":"i","algorithms":["EdDSA"],"jwks":{{"keys":[{ed}]}}}}]"#
        );
        assert!(matches!(
            parse(&with(&inline)).unwrap().trusted_issuers[0].keys,
            KeySource::Inline(_)
        ));
        let as_string = format!(
            r#""trusted_issuers":[{{"issuer":"i","algorithms":["EdDSA"],"jwks":{}}}]"#,
            serde_json::Value::String(format!(r#"{{"keys":[{ed}]}}"#))
        );
        assert!(matches!(
            parse(&with(&as_string)).unwrap().trusted_issuers[0].keys,
            KeySource::Inline(_)
        ));

        let cases = [
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["none"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].algorithms",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["HS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].algorithms",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["ES384"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].algorithms",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":[],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].algorithms",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"]}]"#,
                "trusted_issuers[0]",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks":{"keys":[]},"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0]",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks":{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}}]"#,
                "trusted_issuers[0].jwks",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks":"not json"}]"#,
                "trusted_issuers[0].jwks",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"j"}}]"#,
                "trusted_issuers[0].jwks_uri.path",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j","refresh_s":1}}]"#,
                "trusted_issuers[0].jwks_uri.refresh_s",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"leeway_s":301,"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].leeway_s",
            ),
            (
                r#""trusted_issuers":[{"issuer":"","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[0].issuer",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}},{"issuer":"i","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j"}}]"#,
                "trusted_issuers[1].issuer",
            ),
            (
                r#""trusted_issuers":[{"issuer":"i","algorithms":["RS256"],"jwks_uri":{"cluster":"c","authority":"a","path":"/j","url":"x"}}]"#,
                "trusted_issuers[0].jwks_uri.url",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(err_key(&with(extra)), key, "{extra}");
        }
    }

    #[test]
    fn secret_comes_from_the_vm_environment() {
        let json = r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret_env":"STS_SECRET"}}"#;
        let env = |k: &str| (k == "STS_SECRET").then(|| "from-env".to_string());
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        assert_eq!(c.endpoint.auth(), &ClientAuth::basic("c", "from-env"));
        let e = parse(json).unwrap_err();
        assert_eq!(e.key, "sts.client_secret_env");
        assert!(e.to_string().contains("STS_SECRET"));
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let typed = parse(r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":987654321}}"#)
            .unwrap_err()
            .to_string();
        assert!(!typed.contains("987654321"), "{typed}");
        assert!(typed.contains("expected a string"), "{typed}");
        let e = err_key(&with(r#""bogus":1"#));
        assert_eq!(e, "bogus");
        let msg = parse(&with(r#""bogus":1"#)).unwrap_err().to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
        let summary = parse(MINIMAL).unwrap().summary();
        assert!(!summary.contains("s3cret"), "{summary}");
        assert!(summary.contains("sts.example.com/token"));
    }

    #[test]
    fn values_that_would_misbehave_later_are_refused_at_load() {
        let sts = r#""sts":{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x"}"#;
        let doc = |rest: &str| format!("{{{sts},{rest}}}");
        for h in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "te",
            "upgrade",
            "host",
            ":path",
            "keep-alive",
        ] {
            for (json, key) in [
                (format!(r#""output":{{"header":"{h}"}}"#), "output.header"),
                (
                    format!(r#""output":{{"original_token_header":"{h}"}}"#),
                    "output.original_token_header",
                ),
                (
                    format!(r#""subject_token":{{"header":"{h}"}}"#),
                    "subject_token.header",
                ),
                (
                    format!(r#""exchange":{{"actor":{{"source":"header","header":"{h}"}}}}"#),
                    "exchange.actor.header",
                ),
            ] {
                assert_eq!(err_key(&doc(&json)), key, "{h} in {key}");
            }
        }
        let issuer = |iss: &str, uri: &str| {
            doc(&format!(
                r#""trusted_issuers":[{{"issuer":"{iss}","algorithms":["ES256"],"jwks_uri":{uri}}}]"#
            ))
        };
        let good_uri = r#"{"cluster":"idp","authority":"idp.local","path":"/jwks"}"#;
        assert!(parse(&issuer("https://idp", good_uri)).is_ok());
        for (iss, uri, key) in [
            (" https://idp", good_uri, "trusted_issuers[0].issuer"),
            ("https://idp ", good_uri, "trusted_issuers[0].issuer"),
            (
                "https://idp",
                r#"{"cluster":"idp","authority":"idp.local","path":"/jw ks"}"#,
                "trusted_issuers[0].jwks_uri.path",
            ),
            (
                "https://idp",
                r#"{"cluster":"idp","authority":"idp.local","path":"/jwks\r\nx: y"}"#,
                "trusted_issuers[0].jwks_uri.path",
            ),
            (
                "https://idp",
                r#"{"cluster":"idp","authority":"idp .local","path":"/jwks"}"#,
                "trusted_issuers[0].jwks_uri.authority",
            ),
            (
                "https://idp",
                r#"{"cluster":"idp","authority":"idp.local\u0000","path":"/jwks"}"#,
                "trusted_issuers[0].jwks_uri.authority",
            ),
        ] {
            assert_eq!(err_key(&issuer(iss, uri)), key, "{uri}");
        }
        let bad_path = r#"{"sts":{"cluster":"s","authority":"a","token_path":"/t\u0001","client_id":"c","client_secret":"x"}}"#;
        assert_eq!(err_key(bad_path), "sts.token_path");
    }

    #[test]
    fn a_secret_in_the_wrong_key_is_never_printed() {
        let (pem, _) = crate::assertion::tests::es256_pem();
        let pem_json = serde_json::to_string(&pem).unwrap();
        let secret = "pa55-W0rd!with spaces and more";
        for json in [
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{{"pem_env":{pem_json}}}}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret_env":"{secret}"}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x","client_auth":"{secret}"}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_auth":"private_key_jwt","private_key":{{"pem":"x","alg":"{secret}"}}}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x"}},"exchange":{{"grant":"{secret}"}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x"}},"exchange":{{"actor":{{"source":"{secret}"}}}}}}"#
            ),
            format!(
                r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_id":"c","client_secret":"x"}},"trusted_issuers":[{{"issuer":"i","algorithms":["{secret}"],"jwks":{{"keys":[]}}}}]}}"#
            ),
        ] {
            let msg = parse(&json).unwrap_err().to_string();
            assert!(
                !msg.contains("BEGIN") && !msg.contains("MII") && !msg.contains("pa55"),
                "{msg}"
            );
            let first_line = pem.lines().nth(1).unwrap_or_default();
            assert!(!msg.contains(first_line), "{msg}");
        }
    }

    #[test]
    fn route_overrides_replace_only_the_keys_they_set() {
        let c = parse(&with(
            r#""exchange":{"audience":"a","scope":"s1"},"routes":[{"match":{"path_prefix":"/b"},"exchange":{"audience":["b","c"]}}]"#,
        ))
        .unwrap();
        let form = |i: usize| {
            let body = c.profiles[i]
                .request(&c.endpoint, "t", None, 0)
                .unwrap()
                .body;
            form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect::<Vec<(String, String)>>()
        };
        let field = |f: &[(String, String)], k: &str| -> Vec<String> {
            f.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(field(&form(0), "audience"), vec!["a"]);
        assert_eq!(field(&form(1), "audience"), vec!["b", "c"]);
        assert_eq!(field(&form(1), "scope"), vec!["s1"]);
    }
}
