//! The serde shape of the plugin's JSON: every key optional where the contract has a default,
//! unknown keys refused.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{json_path, ConfigError, OnMissingToken, OnStsUnavailable};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) sts: RawSts,
    #[serde(default)]
    pub(super) token_services: BTreeMap<String, RawSts>,
    #[serde(default)]
    pub(super) protected_resource: Option<RawProtectedResource>,
    #[serde(default)]
    pub(super) subject_token: RawSubjectToken,
    #[serde(default)]
    pub(super) trusted_issuers: Vec<RawIssuer>,
    #[serde(default)]
    pub(super) exchange: RawExchange,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) require: Option<Vec<RawRequirement>>,
    #[serde(default)]
    pub(super) introspect: Option<String>,
    #[serde(default)]
    pub(super) output: RawOutput,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) realm: Option<String>,
    #[serde(default)]
    pub(super) on_missing_token: OnMissingToken,
    #[serde(default)]
    pub(super) on_sts_unavailable: OnStsUnavailable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSts {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) token_path: String,
    pub(super) timeout_ms: Option<u64>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) private_key: Option<RawPrivateKey>,
    pub(super) ciba: Option<RawCiba>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCiba {
    pub(super) path: String,
    pub(super) mode: Option<String>,
    pub(super) notify_path: Option<String>,
    pub(super) login_hint: Option<String>,
    pub(super) binding_message: Option<String>,
    pub(super) acr_values: Option<String>,
    pub(super) requested_expiry_s: Option<u64>,
    pub(super) wait_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivateKey {
    pub(super) pem: Option<String>,
    pub(super) pem_env: Option<String>,
    pub(super) alg: Option<String>,
    pub(super) kid: Option<String>,
    pub(super) audience: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActor {
    pub(super) source: String,
    pub(super) scope: Option<String>,
    pub(super) audience: Option<OneOrMany>,
    pub(super) header: Option<String>,
    pub(super) token_type: Option<String>,
}

/// Tells a key set to `null` (`Some(None)`) from an absent key (`None`).
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) issuer: String,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) leeway_s: Option<u64>,
    pub(super) jwks: Option<serde_json::Value>,
    pub(super) jwks_uri: Option<RawRemote>,
    pub(super) discovery: Option<RawRemote>,
    pub(super) action: Option<String>,
    pub(super) introspection: Option<RawIntrospection>,
}

/// An issuer's RFC 7662 introspection endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntrospection {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) path: String,
    pub(super) timeout_ms: Option<u64>,
    pub(super) cache_s: Option<u64>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) private_key: Option<RawPrivateKey>,
}

/// Where a key set (`jwks_uri`, path required) or a discovery document (`discovery`, path
/// defaulted) is fetched.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) path: Option<String>,
    pub(super) refresh_s: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubjectToken {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) token_type: Option<String>,
    pub(super) max_bytes: Option<usize>,
}

/// A list that may also be written as one string.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExchange {
    pub(super) grant: Option<String>,
    pub(super) audience: Option<OneOrMany>,
    pub(super) resource: Option<OneOrMany>,
    pub(super) scope: Option<String>,
    pub(super) requested_token_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(super) actor: Option<Option<RawActor>>,
    pub(super) expect_act: Option<bool>,
    pub(super) enforce_may_act: Option<bool>,
    pub(super) extra_params: Option<BTreeMap<String, String>>,
    pub(super) sts: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(super) then: Option<Option<Box<RawExchange>>>,
}

/// RFC 9728 protected resource metadata, answered by the filter itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtectedResource {
    pub(super) path: Option<String>,
    pub(super) resource: String,
    pub(super) authorization_servers: Option<Vec<String>>,
    pub(super) scopes_supported: Option<Vec<String>>,
    pub(super) resource_name: Option<String>,
    pub(super) resource_documentation: Option<String>,
}

impl RawExchange {
    /// This exchange with every key the override sets replaced.
    pub(super) fn overridden_by(&self, o: &RawExchange) -> RawExchange {
        let grant = o.grant.clone().or_else(|| self.grant.clone());
        // Only token exchange takes an audience, resource, actor or requested type: a route that
        // picks another grant inherits none of them (written on the route itself, they are
        // refused by name).
        let all = matches!(grant.as_deref(), None | Some("token_exchange"));
        fn inherit<T: Clone>(all: bool, own: &Option<T>, default: &Option<T>) -> Option<T> {
            own.clone().or_else(|| default.clone().filter(|_| all))
        }
        RawExchange {
            audience: inherit(all, &o.audience, &self.audience),
            resource: inherit(all, &o.resource, &self.resource),
            scope: o.scope.clone().or_else(|| self.scope.clone()),
            requested_token_type: inherit(all, &o.requested_token_type, &self.requested_token_type),
            actor: inherit(all, &o.actor, &self.actor),
            expect_act: inherit(all, &o.expect_act, &self.expect_act),
            grant,
            enforce_may_act: o.enforce_may_act.or(self.enforce_may_act),
            extra_params: o.extra_params.clone().or_else(|| self.extra_params.clone()),
            sts: o.sts.clone().or_else(|| self.sts.clone()),
            then: o.then.clone().or_else(|| self.then.clone()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    #[serde(default, rename = "match")]
    pub(super) matcher: RawMatch,
    #[serde(default)]
    pub(super) exchange: Option<RawExchange>,
    #[serde(default)]
    pub(super) bypass: bool,
    #[serde(default)]
    pub(super) require: Option<Vec<RawRequirement>>,
    #[serde(default)]
    pub(super) introspect: Option<String>,
}

/// One alternative of a `require` policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequirement {
    pub(super) scopes: Option<Vec<String>>,
    pub(super) claims: Option<BTreeMap<String, OneOrMany>>,
}

/// One entry of `output.claims_to_headers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimHeader {
    pub(super) claim: String,
    pub(super) header: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) authority: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) original_token_header: Option<String>,
    pub(super) claims_to_headers: Option<Vec<RawClaimHeader>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) max_entries: Option<u32>,
    pub(super) expiry_skew_s: Option<u64>,
    pub(super) default_ttl_s: Option<u64>,
    pub(super) negative_ttl_s: Option<u64>,
    pub(super) refresh_ahead_s: Option<u64>,
    pub(super) evict_on_upstream_401: Option<bool>,
}

/// Names the key serde complained about (its dotted path, e.g. `sts.timeout_ms`, found from the
/// error's position in `json`) and cuts the offending value out of "invalid type/value" messages
/// so that a misplaced secret is never logged.
pub(super) fn serde_error(json: &[u8], e: &serde_json::Error) -> ConfigError {
    let mut msg = e.to_string();
    if msg.starts_with("invalid") {
        if let (Some(colon), Some(expected)) = (msg.find(':'), msg.find(", expected")) {
            if colon < expected {
                msg = format!("{}{}", &msg[..colon], &msg[expected..]);
            }
        }
    }
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next());
    let offset = json_path::offset_of(json, e.line(), e.column());
    let path = json_path::path_at(json, offset, missing.is_some());
    let key = match (path.as_str(), missing) {
        ("", Some(field)) => field.to_string(),
        (_, Some(field)) => format!("{path}.{field}"),
        ("", None) => "(document)".to_string(),
        _ => path,
    };
    ConfigError::new(key, msg)
}
