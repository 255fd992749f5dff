//! The configuration contract: the plugin's JSON, validated into plain data ([`Config`]) that the
//! rest of the filter compiles what it needs from. This module imports nothing of the crate.
//!
//! `raw` is the serde shape, `validate` every rule of the contract.

use std::collections::BTreeMap;
use std::fmt;

mod ciba;
mod credentials;
mod dpop;
mod exchange;
mod introspection;
mod json_path;
mod policy;
mod raw;
mod state;
mod unique;
mod validate;
mod values;

use raw::RawConfig;
pub use state::StateField;

/// The RFC 8693 token type URI of an OAuth access token, the default subject token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why a configuration was refused: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `sts.timeout_ms`; empty for the whole document.
    pub key: String,
    /// What is wrong, without echoing any secret value.
    pub reason: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid configuration: {}", self.reason)
        } else {
            write!(f, "invalid configuration: {}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// What to do with a request that carries no subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissingToken {
    /// Answer 401 with a `WWW-Authenticate` challenge.
    #[default]
    Reject,
    /// Pass the request on untouched.
    Allow,
}

/// What to do when the STS cannot be reached, times out or answers 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStsUnavailable {
    /// Answer 503 (fail closed).
    #[default]
    Deny,
    /// Strip the caller's token and pass the request on (fail open).
    Allow,
}

impl OnMissingToken {
    /// The contract's word for it.
    pub fn name(self) -> &'static str {
        match self {
            OnMissingToken::Reject => "reject",
            OnMissingToken::Allow => "allow",
        }
    }
}

impl OnStsUnavailable {
    /// The contract's word for it.
    pub fn name(self) -> &'static str {
        match self {
            OnStsUnavailable::Deny => "deny",
            OnStsUnavailable::Allow => "allow",
        }
    }
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
    /// Verified claims written into request headers (client-sent copies always removed).
    pub claims_to_headers: Vec<ClaimHeader>,
    /// The fields of each request's decision left in Envoy's filter state.
    pub filter_state: Vec<StateField>,
}

/// A verified claim written into a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The claim: a top-level name, or a dotted path into objects.
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
    /// Its other spellings with `-` and `_` swapped, which CGI-style upstreams read as the same
    /// header (`x_tenant` as `x-tenant`): removed from every request the filter lets through.
    pub aliases: Vec<String>,
}

/// One alternative of an access policy: every condition in it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Scopes the token must carry (in `scope` or `scp`).
    pub scopes: Vec<String>,
    /// Claims whose value (or an element of it) must equal one of the listed strings.
    pub claims: Vec<ClaimRule>,
    /// The token's `acr` must be one of these (none: any).
    pub acr: Vec<String>,
    /// The token's `auth_time` must be at most this many seconds ago.
    pub max_age_s: Option<u64>,
}

impl Requirement {
    /// It asks for a strength or freshness of the user's authentication (RFC 9470).
    pub fn steps_up(&self) -> bool {
        !self.acr.is_empty() || self.max_age_s.is_some()
    }
}

/// A claim condition of a [`Requirement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    /// The claim: a top-level name, or a dotted path into objects.
    pub name: String,
    /// The values accepted.
    pub values: Vec<String>,
}

/// An access policy: any one of its alternatives must hold; none at all means no policy.
pub type Policy = Vec<Requirement>;

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
    /// A hit on an entry expiring within this many seconds starts a background exchange that
    /// replaces it; 0 disables refresh-ahead.
    pub refresh_ahead_s: u64,
    /// An upstream 401 to a request that carried a minted token drops that token's entry.
    pub evict_on_upstream_401: bool,
}

/// The STS endpoint and the filter's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct StsConfig {
    /// Envoy cluster name of the STS.
    pub cluster: String,
    /// `:authority` of the call.
    pub authority: String,
    /// Path of the token endpoint.
    pub token_path: String,
    /// Call timeout in milliseconds.
    pub timeout_ms: u64,
    /// The filter's client id.
    pub client_id: Option<String>,
    /// How the filter authenticates.
    pub client_auth: ClientAuthConfig,
    /// The backchannel authentication endpoint (OpenID CIBA), if configured.
    pub ciba: Option<CibaConfig>,
}

/// OpenID CIBA Core 1.0: asking the user on another device before acting for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CibaConfig {
    /// Path of the backchannel authentication endpoint on the STS cluster.
    pub path: String,
    /// Poll, or ping with the path the STS notifies.
    pub mode: CibaMode,
    /// How the user is named in the backchannel request.
    pub login_hint: LoginHint,
    /// `binding_message`, shown on both devices.
    pub binding_message: Option<String>,
    /// `acr_values`.
    pub acr_values: Option<String>,
    /// `requested_expiry`, seconds.
    pub requested_expiry_s: Option<u64>,
    /// How long a request waits for the user's answer before 503.
    pub wait_s: u64,
}

/// How the filter learns the user's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CibaMode {
    /// Poll the token endpoint every `interval`.
    Poll,
    /// The STS POSTs to this path of the listener (answered by the filter), then the filter polls.
    Ping {
        /// The notification path.
        notify_path: String,
    },
}

/// How the backchannel request names the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginHint {
    /// `login_hint` = this claim of the verified subject token (trusted issuers required).
    Claim(String),
    /// `login_hint_token` = the subject token.
    LoginHintToken,
    /// `id_token_hint` = the subject token.
    IdTokenHint,
}

/// Shows where and how, never a credential.
impl fmt::Debug for StsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StsConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("token_path", &self.token_path)
            .field("timeout_ms", &self.timeout_ms)
            .field("client_id", &self.client_id)
            .field("client_auth", &self.client_auth.name())
            .field("ciba", &self.ciba)
            .finish()
    }
}

/// The filter's client authentication at the STS (RFC 6749 §2.3, RFC 7523 §2.2).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuthConfig {
    /// `client_secret_basic`.
    Basic {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
    /// `client_secret_post`.
    Post {
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
    },
    /// `private_key_jwt`.
    PrivateKeyJwt {
        /// Client id (`iss` and `sub` of the assertions).
        id: String,
        /// The signing key.
        key: PrivateKeyConfig,
    },
    /// `tls_client_auth` / `self_signed_tls_client_auth` (RFC 8705 §2): the client id in the
    /// form, the proof in the STS cluster's client certificate.
    Certificate {
        /// Client id.
        id: String,
        /// `self_signed_tls_client_auth`.
        self_signed: bool,
    },
    /// No client authentication (a public client).
    None,
}

impl ClientAuthConfig {
    /// The method's name as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuthConfig::Basic { .. } => "client_secret_basic",
            ClientAuthConfig::Post { .. } => "client_secret_post",
            ClientAuthConfig::PrivateKeyJwt { .. } => "private_key_jwt",
            ClientAuthConfig::Certificate {
                self_signed: false, ..
            } => "tls_client_auth",
            ClientAuthConfig::Certificate {
                self_signed: true, ..
            } => "self_signed_tls_client_auth",
            ClientAuthConfig::None => "none",
        }
    }
}

/// The `private_key_jwt` signing key as configured (the PEM is parsed where it is used).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyConfig {
    /// The PEM text.
    pub pem: String,
    /// `ES256`, `RS256` or `EdDSA`.
    pub alg: String,
    /// `kid` of the assertions' header.
    pub kid: Option<String>,
    /// `aud` of the assertions.
    pub audience: String,
}

/// A JWS algorithm the filter can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl JwsAlg {
    /// The JWS names of every supported algorithm.
    pub const NAMES: [&'static str; 8] = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA",
    ];

    /// The algorithm named by a JWS `alg` value, if supported.
    pub fn from_name(name: &str) -> Option<JwsAlg> {
        Some(match name {
            "RS256" => JwsAlg::Rs256,
            "RS384" => JwsAlg::Rs384,
            "RS512" => JwsAlg::Rs512,
            "PS256" => JwsAlg::Ps256,
            "PS384" => JwsAlg::Ps384,
            "PS512" => JwsAlg::Ps512,
            "ES256" => JwsAlg::Es256,
            "EdDSA" => JwsAlg::EdDsa,
            _ => return None,
        })
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlg::Rs256 => "RS256",
            JwsAlg::Rs384 => "RS384",
            JwsAlg::Rs512 => "RS512",
            JwsAlg::Ps256 => "PS256",
            JwsAlg::Ps384 => "PS384",
            JwsAlg::Ps512 => "PS512",
            JwsAlg::Es256 => "ES256",
            JwsAlg::EdDsa => "EdDSA",
        }
    }
}

/// Which grant an exchange sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693 token exchange.
    TokenExchange,
    /// RFC 7523 JWT bearer: the subject JWT is the `assertion`.
    JwtBearer,
    /// OpenID CIBA: the user approves on another device, then the token endpoint answers.
    Ciba,
}

/// Where a delegation's actor token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActorSource {
    /// The filter's own token from a client-credentials grant with this scope and audience.
    ClientCredentials {
        /// `scope` of the client-credentials request.
        scope: Option<String>,
        /// `audience` values of the client-credentials request.
        audience: Vec<String>,
    },
    /// A token the calling workload sends in this (lower-case) header.
    Header(String),
}

/// The actor of a delegation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorConfig {
    /// Its source.
    pub source: ActorSource,
    /// `actor_token_type` sent with it.
    pub token_type: String,
}

/// One set of exchange parameters: the default exchange, or a route's (with its overrides applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// The grant sent.
    pub grant: Grant,
    /// `audience` values.
    pub audience: Vec<String>,
    /// `resource` values.
    pub resource: Vec<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `requested_token_type`, sent only when set.
    pub requested_token_type: Option<String>,
    /// Further form parameters.
    pub extra_params: BTreeMap<String, String>,
    /// The actor, for delegation; `None` is impersonation.
    pub actor: Option<ActorConfig>,
    /// Check that a minted JWT's `act.sub` names the actor.
    pub expect_act: bool,
    /// Refuse a delegation whose actor a verified subject token's `may_act` does not name.
    pub enforce_may_act: bool,
    /// The access policy of the routes using this exchange: an index into [`Config::policies`].
    pub policy: usize,
    /// The trusted issuer whose introspection endpoint judges an opaque token on these routes.
    pub introspect: Option<usize>,
    /// The token service called: 0 is `sts`, `i` is [`Config::token_services`]`[i - 1]`.
    pub service: usize,
    /// A second hop, sent the first hop's token (identity chaining, ID-JAG).
    pub then: Option<Box<ExchangeConfig>>,
    /// These routes take DPoP-bound tokens only (`dpop.required`).
    pub dpop_required: bool,
}

/// The criteria of a route rule; every criterion given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// Lower-case authority; the request's must equal it but for case (port and dot included).
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
    /// Exchange with the profile at this index of [`Config::exchanges`].
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
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// Given in the configuration (a JWKS document, parsed where it is used).
    Inline(serde_json::Value),
    /// Fetched from a cluster and refreshed.
    Remote(JwksUri),
    /// Found through OIDC discovery: the `path` of this one is the discovery document's, whose
    /// `issuer` must equal the issuer and whose `jwks_uri` must name the same authority.
    Discovery(JwksUri),
    /// None: the issuer's tokens are opaque and introspected; a JWT naming it is refused.
    None,
}

/// An issuer's RFC 7662 introspection endpoint and the filter's credentials there.
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority` of the call.
    pub authority: String,
    /// Path of the endpoint.
    pub path: String,
    /// Call timeout in milliseconds.
    pub timeout_ms: u64,
    /// Longest an active answer is trusted (seconds; never past the token's `exp`).
    pub cache_s: u64,
    /// The filter's client id there.
    pub client_id: Option<String>,
    /// How the filter authenticates there.
    pub client_auth: ClientAuthConfig,
}

/// Shows where and how, never a credential.
impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("client_auth", &self.client_auth.name())
            .finish_non_exhaustive()
    }
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Its verified tokens are passed on unchanged instead of exchanged (`action: forward`):
    /// tokens the services already accept, as during a migration.
    pub forward: bool,
    /// Its opaque tokens are checked at this RFC 7662 endpoint.
    pub introspection: Option<IntrospectionConfig>,
    /// A token's `cnf` binding is checked (`bound_tokens: enforce`); `false` (`ignore`): its
    /// tokens count as unbound.
    pub enforce_binding: bool,
}

/// A further named token service (`token_services.<name>`), beside `sts`.
#[derive(Debug, Clone)]
pub struct TokenService {
    /// Its name, as exchanges and the per-service counters spell it.
    pub name: String,
    /// Its endpoint and the filter's credentials there.
    pub sts: StsConfig,
}

/// RFC 9728 protected resource metadata, answered by the filter at `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    /// Path answered (`GET` only), never routed.
    pub path: String,
    /// The metadata document, serialized once.
    pub document: String,
    /// `https://` and the authority of `resource`: named in challenges when the request's own
    /// authority cannot be.
    pub origin: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// STS endpoint and credentials: the default token service.
    pub sts: StsConfig,
    /// Further named token services.
    pub token_services: Vec<TokenService>,
    /// The protected resource metadata the filter answers, if any.
    pub protected_resource: Option<ProtectedResource>,
    /// Headers carrying callers' actor tokens: never forwarded upstream.
    pub actor_headers: Vec<String>,
    /// Subject token extraction.
    pub subject_token: SubjectTokenConfig,
    /// Issuers whose JWTs are accepted; empty: the STS alone judges tokens.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Exchanges; index 0 is the default exchange, the others belong to routes.
    pub exchanges: Vec<ExchangeConfig>,
    /// Route rules, first match wins.
    pub routes: Vec<Route>,
    /// Access policies; index 0 is the default (`require`), the others belong to routes.
    pub policies: Vec<Policy>,
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
    /// DPoP proof rules (RFC 9449).
    pub dpop: DpopConfig,
}

/// The rules a DPoP proof is held to (RFC 9449 §4.3), and the default of `required`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopConfig {
    /// Routes without a `dpop` of their own take DPoP-bound tokens only.
    pub required: bool,
    /// The proofs' algorithms (asymmetric only).
    pub algorithms: Vec<JwsAlg>,
    /// How old a proof's `iat` may be (seconds).
    pub max_age_s: u64,
    /// How far a proof's `iat` may be off the proxy's clock (seconds).
    pub clock_skew_s: u64,
    /// External origins a proof's `htu` may name (lower case), for TLS ended before Envoy.
    pub origins: Vec<String>,
    /// Slots of the shared table of proofs seen.
    pub replay_entries: u32,
}

impl Config {
    /// Parses and validates the plugin configuration. `env` resolves `*_env` keys (the VM's
    /// environment in Envoy).
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_json::from_slice(json).map_err(|e| raw::serde_error(json, &e))?;
        validate::validate(raw, env)
    }

    /// Token service `i`: 0 is `sts`, the others are [`Config::token_services`] in order.
    pub fn service(&self, i: usize) -> &StsConfig {
        match i.checked_sub(1).and_then(|n| self.token_services.get(n)) {
            Some(t) => &t.sts,
            None => &self.sts,
        }
    }

    /// The name of token service `i` (`sts` for the default).
    pub fn service_name(&self, i: usize) -> &str {
        match i.checked_sub(1).and_then(|n| self.token_services.get(n)) {
            Some(t) => &t.name,
            None => "sts",
        }
    }

    /// How many token services there are, `sts` included.
    pub fn service_count(&self) -> usize {
        self.token_services.len() + 1
    }

    /// A one-line summary for the start-up log; it names no secret.
    pub fn summary(&self) -> String {
        format!(
            "sts={}{} via cluster {} auth={} token_services={} routes={} cache.max_entries={} cache.refresh_ahead_s={} cache.evict_on_upstream_401={} on_missing_token={} on_sts_unavailable={}",
            self.sts.authority,
            self.sts.token_path,
            self.sts.cluster,
            self.sts.client_auth.name(),
            self.token_services.len(),
            self.routes.len(),
            self.cache.max_entries,
            self.cache.refresh_ahead_s,
            self.cache.evict_on_upstream_401,
            self.on_missing_token.name(),
            self.on_sts_unavailable.name(),
        ) + &self.unbound_issuers()
    }

    /// The start line's note of issuers whose bound tokens count as unbound (empty if none).
    fn unbound_issuers(&self) -> String {
        let names: Vec<&str> = (self.trusted_issuers.iter())
            .filter(|t| !t.enforce_binding)
            .map(|t| t.issuer.as_str())
            .collect();
        if names.is_empty() {
            return String::new();
        }
        format!(
            " bound_tokens=ignore (no cnf check, bound tokens taken as bearer tokens) for {}",
            names.join(", ")
        )
    }
}

#[cfg(test)]
pub(crate) mod tests;
