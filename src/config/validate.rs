//! Every rule of the configuration contract: the serde shape in, validated plain data out, or one
//! error naming the key at fault (never echoing a value that could be a secret).

use super::ciba::validate_ciba;
use super::credentials::{validate_server, Credentials};
use super::dpop::{asymmetric_algorithm, bound_tokens, route_required, validate_dpop};
use super::exchange::{validate_exchange, validate_match, ExchangeContext};
use super::introspection::{default_introspect, introspecting, validate_introspection};
use super::policy::{validate_claim_headers, validate_policy, MAX_POLICIES};
use super::raw::*;
use super::state::validate_filter_state;
use super::values::*;
use super::*;

pub(super) fn validate(
    mut raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let sts = validate_sts(raw.sts, "sts", env)?;
    if raw.token_services.len() > 15 {
        return Err(ConfigError::new("token_services", "at most 15 services"));
    }
    let mut token_services = Vec::with_capacity(raw.token_services.len());
    for (name, r) in std::mem::take(&mut raw.token_services) {
        let key = format!("token_services.{name}");
        let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        if name.is_empty() || name.len() > 32 || !name.bytes().all(valid) || name == "sts" {
            return Err(ConfigError::new(
                "token_services",
                format!(
                    "{} is not a service name: 1 to 32 of a-z, 0-9, _ and -, and not sts",
                    shown_key(&name)
                ),
            ));
        }
        if r.ciba.is_some() {
            return Err(ConfigError::new(
                format!("{key}.ciba"),
                "CIBA is configured on sts only",
            ));
        }
        let service = validate_sts(r, &key, env)?;
        token_services.push(TokenService { name, sts: service });
    }
    let service_names: Vec<String> = token_services.iter().map(|t| t.name.clone()).collect();
    let protected_resource = raw
        .protected_resource
        .take()
        .map(validate_protected_resource)
        .transpose()?;
    let subject_token = validate_subject(raw.subject_token)?;
    let mut actor_headers = Vec::new();
    let mut trusted_issuers = Vec::with_capacity(raw.trusted_issuers.len());
    for (i, r) in raw.trusted_issuers.into_iter().enumerate() {
        let issuer = validate_issuer(r, &format!("trusted_issuers[{i}]"), env)?;
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
    let claims_to_headers = raw.output.claims_to_headers.take();
    let mut output = validate_output(raw.output, &subject_token)?;
    let cache = validate_cache(raw.cache)?;

    let mut ctx = ExchangeContext {
        ciba: sts.ciba.is_some(),
        subject: &subject_token,
        actor_headers: &mut actor_headers,
        services: &service_names,
    };
    let dpop = validate_dpop(raw.dpop.take())?;
    let mut exchanges = vec![validate_exchange(&raw.exchange, "exchange", &mut ctx)?];
    exchanges[0].dpop_required = dpop.required;
    let mut policies = vec![validate_policy(raw.require.unwrap_or_default(), "require")?];
    let mut policy_keys = vec!["require".to_string()];
    let mut routes = Vec::with_capacity(raw.routes.len());
    let named = raw.routes.iter().any(|r| r.introspect.is_some());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        let matcher = validate_match(r.matcher, &key)?;
        if r.bypass
            && (r.exchange.is_some()
                || r.require.is_some()
                || r.introspect.is_some()
                || r.dpop.is_some())
        {
            return Err(ConfigError::new(
                key,
                "a bypass rule has no exchange, policy, introspection or dpop",
            ));
        }
        let dpop_required = r
            .dpop
            .map(|d| route_required(d, &format!("{key}.dpop")))
            .transpose()?;
        let introspect = r
            .introspect
            .as_deref()
            .map(|n| introspecting(n, &trusted_issuers, &format!("{key}.introspect")))
            .transpose()?;
        let policy = match r.require {
            Some(p) => {
                let k = format!("{key}.require");
                policies.push(validate_policy(p, &k)?);
                policy_keys.push(k);
                Some(policies.len() - 1)
            }
            None => None,
        };
        let exchange = match r.exchange {
            Some(o) => Some(validate_exchange(
                &raw.exchange.overridden_by(&o),
                &format!("{key}.exchange"),
                &mut ctx,
            )?),
            // A policy or an introspecting issuer of its own needs an exchange profile of its
            // own (the default's keys).
            None if policy.is_some() || introspect.is_some() || dpop_required.is_some() => {
                Some(exchanges[0].clone())
            }
            None => None,
        };
        let action = match (r.bypass, exchange) {
            (true, _) => RouteAction::Bypass,
            (false, None) => RouteAction::Exchange(0),
            (false, Some(mut e)) => {
                e.policy = policy.unwrap_or(0);
                e.introspect = introspect;
                e.dpop_required = dpop_required.unwrap_or(dpop.required);
                exchanges.push(e);
                RouteAction::Exchange(exchanges.len() - 1)
            }
        };
        routes.push(Route { matcher, action });
    }
    // Routes that name no introspecting issuer take the default one.
    let default = default_introspect(raw.introspect.as_deref(), named, &trusted_issuers)?;
    for e in exchanges.iter_mut().filter(|e| e.introspect.is_none()) {
        e.introspect = default;
    }
    if policies.len() > MAX_POLICIES {
        return Err(ConfigError::new(
            "routes",
            format!(
                "at most {} routes may have a require of their own",
                MAX_POLICIES - 1
            ),
        ));
    }
    let mut taken = vec![output.header.as_str(), subject_token.header.as_str()];
    taken.extend(output.original_token_header.as_deref());
    taken.extend(actor_headers.iter().map(String::as_str));
    output.claims_to_headers = validate_claim_headers(claims_to_headers, &taken)?;
    // Policies and claim headers read verified claims only.
    if trusted_issuers.is_empty() {
        let key = match policies.iter().position(|p| !p.is_empty()) {
            _ if !output.claims_to_headers.is_empty() => Some("output.claims_to_headers".into()),
            Some(i) => policy_keys.get(i).cloned(),
            None => None,
        };
        if let Some(key) = key {
            return Err(ConfigError::new(
                key,
                "needs trusted_issuers (only claims of a verified token count)",
            ));
        }
    }

    // A bound token is known by its verified `cnf` only.
    if trusted_issuers.is_empty() && exchanges.iter().any(|e| e.dpop_required) {
        return Err(ConfigError::new(
            "dpop.required",
            "needs trusted_issuers (a token's binding is read from its verified claims)",
        ));
    }

    // The user a consent is asked of must come from a verified token.
    if let Some(c) = &sts.ciba {
        if matches!(c.login_hint, LoginHint::Claim(_)) && trusted_issuers.is_empty() {
            return Err(ConfigError::new(
                "sts.ciba.login_hint",
                "a claim as login_hint needs trusted_issuers (the claim must come from a verified token)",
            ));
        }
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
        token_services,
        protected_resource,
        actor_headers,
        subject_token,
        trusted_issuers,
        exchanges,
        routes,
        policies,
        output,
        cache,
        realm,
        on_missing_token: raw.on_missing_token,
        on_sts_unavailable: raw.on_sts_unavailable,
        dpop,
    })
}

fn validate_sts(
    s: RawSts,
    k: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StsConfig, ConfigError> {
    non_empty(&s.cluster, &format!("{k}.cluster"))?;
    non_empty(&s.authority, &format!("{k}.authority"))?;
    if s.authority.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(ConfigError::new(
            format!("{k}.authority"),
            "must be a host[:port] without scheme or path",
        ));
    }
    call_path(&s.token_path, &format!("{k}.token_path"))?;
    let creds = Credentials {
        method: s.client_auth,
        client_id: s.client_id,
        secret: s.client_secret,
        secret_env: s.client_secret_env,
        private_key: s.private_key,
    };
    let at = (s.authority.as_str(), s.token_path.as_str());
    let (timeout_ms, client_id, client_auth) = validate_server(s.timeout_ms, creds, at, k, env)?;
    let ciba = s.ciba.map(validate_ciba).transpose()?;
    Ok(StsConfig {
        cluster: s.cluster,
        authority: s.authority,
        token_path: s.token_path,
        timeout_ms,
        client_id,
        client_auth,
        ciba,
    })
}

/// RFC 9728 metadata: `resource` an https URL without fragment; the path defaults to the
/// well-known one of that resource (§3.1); the document is written once.
fn validate_protected_resource(p: RawProtectedResource) -> Result<ProtectedResource, ConfigError> {
    let k = "protected_resource";
    uri(&p.resource, &format!("{k}.resource"))?;
    let rest = p.resource.strip_prefix("https://").unwrap_or_default();
    let (authority, resource_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (authority, resource_path) = (authority.to_string(), resource_path.to_string());
    if authority.is_empty() || p.resource.contains('#') || p.resource.contains('?') {
        return Err(ConfigError::new(
            format!("{k}.resource"),
            "must be an https URL without query or fragment",
        ));
    }
    let path = p.path.unwrap_or_else(|| {
        let tail = resource_path.trim_end_matches('/');
        format!("/.well-known/oauth-protected-resource{tail}")
    });
    call_path(&path, &format!("{k}.path"))?;
    let servers = p.authorization_servers.unwrap_or_default();
    for s in &servers {
        uri(s, &format!("{k}.authorization_servers"))?;
    }
    let scopes = p.scopes_supported.unwrap_or_default();
    for s in &scopes {
        scope_tokens(s, &format!("{k}.scopes_supported"))?;
    }
    let mut doc = serde_json::Map::new();
    doc.insert("resource".into(), p.resource.into());
    if !servers.is_empty() {
        doc.insert("authorization_servers".into(), servers.into());
    }
    if !scopes.is_empty() {
        doc.insert("scopes_supported".into(), scopes.into());
    }
    doc.insert("bearer_methods_supported".into(), vec!["header"].into());
    if let Some(n) = p.resource_name {
        printable(&n, &format!("{k}.resource_name"))?;
        doc.insert("resource_name".into(), n.into());
    }
    if let Some(d) = p.resource_documentation {
        uri(&d, &format!("{k}.resource_documentation"))?;
        doc.insert("resource_documentation".into(), d.into());
    }
    let origin = format!("https://{authority}");
    Ok(ProtectedResource {
        origin,
        path,
        document: serde_json::Value::Object(doc).to_string(),
    })
}

fn validate_issuer(
    r: RawIssuer,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TrustedIssuer, ConfigError> {
    non_empty(&r.issuer, &format!("{key}.issuer"))?;
    // Compared byte for byte with a token's `iss`: white space would only ever fail to match.
    no_space_or_control(&r.issuer, &format!("{key}.issuer"))?;
    let audiences = r.audiences.unwrap_or_default();
    for a in &audiences {
        non_empty(a, &format!("{key}.audiences"))?;
    }
    let introspection = r
        .introspection
        .map(|i| validate_introspection(i, &format!("{key}.introspection"), env))
        .transpose()?;
    let has_keys = r.jwks.is_some() || r.jwks_uri.is_some() || r.discovery.is_some();
    let names = r.algorithms.unwrap_or_default();
    if names.is_empty() && (has_keys || introspection.is_none()) {
        return Err(ConfigError::new(
            format!("{key}.algorithms"),
            "must list at least one algorithm",
        ));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for name in &names {
        let k = format!("{key}.algorithms");
        algorithms.push(asymmetric_algorithm(name, &k, "subject tokens")?);
    }
    let leeway_s = whole(r.leeway_s, 30, 0..=300, format!("{key}.leeway_s"))?;
    let keys = match (r.jwks, r.jwks_uri, r.discovery) {
        (Some(jwks), None, None) => {
            let value = match jwks {
                serde_json::Value::String(text) => serde_json::from_str(&text)
                    .map_err(|_| ConfigError::new(format!("{key}.jwks"), "is not JSON"))?,
                other => other,
            };
            KeySource::Inline(value)
        }
        (None, Some(u), None) => KeySource::Remote(remote(u, None, &format!("{key}.jwks_uri"))?),
        (None, None, Some(d)) => {
            let k = format!("{key}.discovery");
            let well_known = Some("/.well-known/openid-configuration");
            KeySource::Discovery(remote(d, well_known, &k)?)
        }
        // Opaque tokens only: introspected, and a JWT naming this issuer is refused.
        (None, None, None) if introspection.is_some() => KeySource::None,
        _ => {
            return Err(ConfigError::new(
                key,
                "give exactly one of jwks, jwks_uri and discovery (or introspection alone)",
            ))
        }
    };
    let forward = match r.action.as_deref() {
        None | Some("exchange") => false,
        Some("forward") => true,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{key}.action"),
                format!(
                    "unknown action {}; use exchange or forward",
                    shown(other, &["exchange", "forward"])
                ),
            ))
        }
    };
    Ok(TrustedIssuer {
        issuer: r.issuer,
        audiences,
        algorithms,
        leeway_s,
        keys,
        forward,
        introspection,
        enforce_binding: bound_tokens(r.bound_tokens.as_deref(), &format!("{key}.bound_tokens"))?,
    })
}

/// Where keys (or the discovery document, whose path has a default) are fetched.
fn remote(r: RawRemote, default_path: Option<&str>, k: &str) -> Result<JwksUri, ConfigError> {
    let RawRemote {
        cluster,
        authority,
        path,
        refresh_s,
        timeout_ms,
    } = r;
    let path = path
        .or_else(|| default_path.map(str::to_string))
        .ok_or_else(|| ConfigError::new(format!("{k}.path"), "is required"))?;
    non_empty(&cluster, &format!("{k}.cluster"))?;
    non_empty(&authority, &format!("{k}.authority"))?;
    no_space_or_control(&authority, &format!("{k}.authority"))?;
    if !path.starts_with('/') {
        return Err(ConfigError::new(format!("{k}.path"), "must start with '/'"));
    }
    no_space_or_control(&path, &format!("{k}.path"))?;
    let refresh_s = whole(refresh_s, 300, 10..=86_400, format!("{k}.refresh_s"))?;
    let timeout_ms = whole(timeout_ms, 2000, 1..=60_000, format!("{k}.timeout_ms"))?;
    Ok(JwksUri {
        cluster,
        authority,
        path,
        refresh_s,
        timeout_ms,
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
    let max_bytes = whole(s.max_bytes, 8192, 16..=65_536, "subject_token.max_bytes")?;
    // At most 65536: it fits any usize.
    let max_bytes = usize::try_from(max_bytes).unwrap_or(65_536);
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
        claims_to_headers: Vec::new(),
        filter_state: validate_filter_state(o.filter_state.unwrap_or_default())?,
    })
}

fn validate_cache(c: RawCache) -> Result<CacheConfig, ConfigError> {
    let max_entries = whole(c.max_entries, 4096, 1..=1_000_000, "cache.max_entries")?;
    // At most 1000000: it fits a u32.
    let max_entries = u32::try_from(max_entries).unwrap_or(1_000_000);
    let check = |v: Option<Whole>, default: u64, key: &str| whole(v, default, 0..=86_400, key);
    Ok(CacheConfig {
        max_entries,
        expiry_skew_s: check(c.expiry_skew_s, 30, "cache.expiry_skew_s")?,
        default_ttl_s: check(c.default_ttl_s, 300, "cache.default_ttl_s")?,
        negative_ttl_s: check(c.negative_ttl_s, 5, "cache.negative_ttl_s")?,
        refresh_ahead_s: check(c.refresh_ahead_s, 0, "cache.refresh_ahead_s")?,
        evict_on_upstream_401: c.evict_on_upstream_401.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::with;
    use super::super::Config;
    use serde_json::{json, Value};

    fn parse(extra: Value) -> Result<Config, super::ConfigError> {
        Config::parse(with(extra).to_string().as_bytes(), &|_| None)
    }

    #[test]
    fn a_bypass_rule_carries_nothing_a_request_on_it_would_skip() {
        let issuers = json!([{ "issuer": "i", "algorithms": ["ES256"], "jwks": { "keys": [] } }]);
        for rule in [
            json!({ "match": { "path_prefix": "/h" }, "bypass": true, "exchange": { "scope": "s" } }),
            json!({ "match": { "path_prefix": "/h" }, "bypass": true, "require": [] }),
        ] {
            let e = parse(json!({ "trusted_issuers": issuers, "routes": [rule] })).unwrap_err();
            assert_eq!(e.key, "routes[0]", "{e}");
        }
    }

    #[test]
    fn a_route_with_its_own_policy_gets_a_profile_of_its_own() {
        let issuers = json!([{ "issuer": "i", "algorithms": ["ES256"], "jwks": { "keys": [] } }]);
        let c = parse(json!({
            "trusted_issuers": issuers,
            "require": [{ "scopes": ["read"] }],
            "routes": [
                { "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "g": ["admins"] } }] },
                { "match": { "path_prefix": "/open" }, "require": [] }
            ]
        }))
        .unwrap();
        assert_eq!(
            c.exchanges.len(),
            3,
            "the default and one per route with a policy"
        );
        assert_eq!(c.policies.len(), 3);
        assert!(c.policies[2].is_empty(), "[] is no policy");
    }

    #[test]
    fn at_most_fifteen_token_services_each_named_as_a_key_may_be() {
        let sts = json!({ "cluster": "p", "authority": "p", "token_path": "/t",
                          "client_id": "c", "client_secret": "s" });
        let many: serde_json::Map<String, Value> =
            (0..16).map(|i| (format!("s{i}"), sts.clone())).collect();
        let e = parse(json!({ "token_services": many })).unwrap_err();
        assert_eq!(e.key, "token_services");
        for bad in ["sts", "Partner", "with space", ""] {
            let e = parse(json!({ "token_services": { bad: sts.clone() } })).unwrap_err();
            assert_eq!(e.key, "token_services", "{bad}");
        }
        assert!(parse(json!({ "token_services": { "partner-2": sts } })).is_ok());
    }
}
