//! The serde shape of the plugin's JSON: every key optional where the contract has a default,
//! unknown keys refused.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::unique::{unique, unique_or_none};
use super::{json_path, ConfigError, OnMissingToken, OnStsUnavailable};

/// Implements `Deserialize` for each contract object so that it is read from a JSON object only:
/// serde's derive also takes a list of the fields in order (`"cache": [100]`), which the
/// contract does not allow. The derive (with `remote = "Self"`) reads the object's keys.
macro_rules! objects_only {
    ($($t:ident),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                /// Takes an object and hands its keys to the derived reader.
                struct Object;
                impl<'de> serde::de::Visitor<'de> for Object {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<$t, A::Error> {
                        $t::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(Object)
            }
        }
    )*};
}

objects_only!(
    RawConfig,
    RawSts,
    RawCiba,
    RawPrivateKey,
    RawActor,
    RawIssuer,
    RawIntrospection,
    RawRemote,
    RawSubjectToken,
    RawExchange,
    RawProtectedResource,
    RawRoute,
    RawRequirement,
    RawClaimHeader,
    RawMatch,
    RawDpop,
    RawOutput,
    RawCache
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawConfig {
    pub(super) sts: RawSts,
    #[serde(default, deserialize_with = "unique")]
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
    #[serde(default)]
    pub(super) dpop: Option<RawDpop>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawSts {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) token_path: String,
    pub(super) timeout_ms: Option<Whole>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) private_key: Option<RawPrivateKey>,
    pub(super) ciba: Option<RawCiba>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawCiba {
    pub(super) path: String,
    pub(super) mode: Option<String>,
    pub(super) notify_path: Option<String>,
    pub(super) login_hint: Option<String>,
    pub(super) binding_message: Option<String>,
    pub(super) acr_values: Option<String>,
    pub(super) requested_expiry_s: Option<Whole>,
    pub(super) wait_s: Option<Whole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawPrivateKey {
    pub(super) pem: Option<String>,
    pub(super) pem_env: Option<String>,
    pub(super) alg: Option<String>,
    pub(super) kid: Option<String>,
    pub(super) audience: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawActor {
    pub(super) source: String,
    pub(super) scope: Option<String>,
    pub(super) audience: Option<OneOrMany>,
    pub(super) header: Option<String>,
    pub(super) token_type: Option<String>,
}

/// One of `choices`, read by its contract name (`name`); any other word or type is refused
/// listing the names.
pub(super) fn named<'de, D, T>(
    d: D,
    choices: &'static [T],
    name: fn(T) -> &'static str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Copy + 'static,
{
    /// Matches a string against the names.
    struct Names<T: 'static> {
        choices: &'static [T],
        name: fn(T) -> &'static str,
    }
    impl<'de, T: Copy> serde::de::Visitor<'de> for Names<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            let names: Vec<String> = self
                .choices
                .iter()
                .map(|c| format!("\"{}\"", (self.name)(*c)))
                .collect();
            f.write_str(&names.join(" or "))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            let found = self.choices.iter().copied().find(|c| (self.name)(*c) == v);
            found.ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_str(Names { choices, name })
}

impl<'de> Deserialize<'de> for OnMissingToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const ALL: &[OnMissingToken] = &[OnMissingToken::Reject, OnMissingToken::Allow];
        named(d, ALL, OnMissingToken::name)
    }
}

impl<'de> Deserialize<'de> for OnStsUnavailable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const ALL: &[OnStsUnavailable] = &[OnStsUnavailable::Deny, OnStsUnavailable::Allow];
        named(d, ALL, OnStsUnavailable::name)
    }
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
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawIssuer {
    pub(super) issuer: String,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) leeway_s: Option<Whole>,
    pub(super) jwks: Option<serde_json::Value>,
    pub(super) jwks_uri: Option<RawRemote>,
    pub(super) discovery: Option<RawRemote>,
    pub(super) action: Option<String>,
    pub(super) introspection: Option<RawIntrospection>,
    pub(super) bound_tokens: Option<String>,
}

/// An issuer's RFC 7662 introspection endpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawIntrospection {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) path: String,
    pub(super) timeout_ms: Option<Whole>,
    pub(super) cache_s: Option<Whole>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_auth: Option<String>,
    pub(super) private_key: Option<RawPrivateKey>,
}

/// Where a key set (`jwks_uri`, path required) or a discovery document (`discovery`, path
/// defaulted) is fetched.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawRemote {
    pub(super) cluster: String,
    pub(super) authority: String,
    pub(super) path: Option<String>,
    pub(super) refresh_s: Option<Whole>,
    pub(super) timeout_ms: Option<Whole>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawSubjectToken {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) token_type: Option<String>,
    pub(super) max_bytes: Option<Whole>,
}

/// A number the contract bounds, read from any JSON value: a string, a fraction or a number
/// past `u64` holds `None`, so that its type and its range are refused by one rule
/// ([`super::values::whole`]) in the same words.
#[derive(Clone, Copy)]
pub(super) struct Whole(pub(super) Option<u64>);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(|v| Whole(v.as_u64()))
    }
}

/// A list that may also be written as one string.
#[derive(Clone)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads a string or a list of strings; an element of the wrong type is refused where
        /// it stands, so that the error names its index.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut all = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    all.push(s);
                }
                Ok(OneOrMany::Many(all))
            }
        }
        d.deserialize_any(Visitor)
    }
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
#[serde(deny_unknown_fields, remote = "Self")]
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
    #[serde(default, deserialize_with = "unique_or_none")]
    pub(super) extra_params: Option<BTreeMap<String, String>>,
    pub(super) sts: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub(super) then: Option<Option<Box<RawExchange>>>,
}

/// RFC 9728 protected resource metadata, answered by the filter itself.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
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
#[serde(deny_unknown_fields, remote = "Self")]
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
    #[serde(default)]
    pub(super) dpop: Option<RawDpop>,
}

/// `dpop`, top-level (every key) or a route's (`required` only).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawDpop {
    pub(super) required: Option<bool>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) max_age_s: Option<Whole>,
    pub(super) clock_skew_s: Option<Whole>,
    pub(super) origins: Option<Vec<String>>,
    pub(super) replay_entries: Option<Whole>,
}

/// One alternative of a `require` policy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawRequirement {
    pub(super) scopes: Option<Vec<String>>,
    pub(super) acr: Option<OneOrMany>,
    pub(super) max_age_s: Option<Whole>,
    #[serde(default, deserialize_with = "unique_or_none")]
    pub(super) claims: Option<BTreeMap<String, OneOrMany>>,
}

/// One entry of `output.claims_to_headers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawClaimHeader {
    pub(super) claim: String,
    pub(super) header: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawMatch {
    pub(super) authority: Option<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawOutput {
    pub(super) header: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) original_token_header: Option<String>,
    pub(super) claims_to_headers: Option<Vec<RawClaimHeader>>,
    pub(super) filter_state: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, remote = "Self")]
pub(super) struct RawCache {
    pub(super) max_entries: Option<Whole>,
    pub(super) expiry_skew_s: Option<Whole>,
    pub(super) default_ttl_s: Option<Whole>,
    pub(super) negative_ttl_s: Option<Whole>,
    pub(super) refresh_ahead_s: Option<Whole>,
    pub(super) evict_on_upstream_401: Option<bool>,
}

/// A serde refusal in the contract's words: the key at fault (its dotted path, e.g.
/// `sts.timeout_ms`, found from the error's position in `json`) and what the key allows.
/// Serde's own wording names Rust types and echoes the value (a misplaced secret may be one):
/// neither reaches the message.
pub(super) fn serde_error(json: &[u8], e: &serde_json::Error) -> ConfigError {
    if e.is_eof() && json.iter().all(u8::is_ascii_whitespace) {
        return ConfigError::new(
            "",
            "the configuration is empty: give the plugin a JSON object with at least \"sts\" \
             (docs/configuration.md lists every key)",
        );
    }
    let offset = json_path::offset_of(json, e.line(), e.column());
    let text = e.to_string();
    let code = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    if e.is_syntax() || e.is_eof() {
        let near = json_path::near(json, offset);
        let path = json_path::path_at(json, offset, false);
        return ConfigError::new(path, format!("not valid JSON near {near}: {code}"));
    }
    if let Some(field) = code.strip_prefix("missing field ") {
        let path = json_path::path_at(json, offset, true);
        let field = field.trim_matches('`');
        let key = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return ConfigError::new(key, "is required");
    }
    let path = json_path::path_at(json, offset, false);
    let reason = if code.starts_with("unknown field") {
        let allowed = code.split_once(", expected ").map_or("", |(_, a)| a);
        let names: Vec<&str> = allowed
            .split(['`', ',', ' '])
            .filter(|w| !w.is_empty() && *w != "or" && *w != "one" && *w != "of")
            .collect();
        format!("is not a key here (the keys here: {})", names.join(", "))
    } else if code.starts_with("duplicate field") {
        "is written twice (one value per key)".to_string()
    } else if let Some((_, expected)) = code.split_once(", expected ") {
        format!("must be {}", contract_words(expected))
    } else {
        "is not allowed here".to_string()
    };
    match (path.is_empty(), reason.starts_with("must")) {
        (true, true) => ConfigError::new("", format!("the configuration {reason}")),
        _ => ConfigError::new(path, reason),
    }
}

/// What serde says a value should be, as the contract says it.
fn contract_words(expected: &str) -> &str {
    match expected {
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "an object",
        e if e.starts_with("struct ") => "an object",
        e => e,
    }
}
