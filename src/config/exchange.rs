//! The rules of exchanges (the default one and each route's), their actors, and route matches.

use super::raw::*;
use super::values::*;
use super::*;

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

/// What validating an exchange needs besides the exchange itself.
pub(super) struct ExchangeContext<'a> {
    /// `sts.ciba` is configured.
    pub(super) ciba: bool,
    pub(super) subject: &'a SubjectTokenConfig,
    pub(super) actor_headers: &'a mut Vec<String>,
    /// The names of `token_services`, in order (service `i + 1`).
    pub(super) services: &'a [String],
}

/// The token service an exchange names (`sts`, the default, is 0).
fn service(name: Option<&str>, key: &str, ctx: &ExchangeContext<'_>) -> Result<usize, ConfigError> {
    match name {
        None | Some("sts") => Ok(0),
        Some(n) => match ctx.services.iter().position(|s| s == n) {
            Some(i) => Ok(i + 1),
            None => Err(ConfigError::new(
                format!("{key}.sts"),
                format!(
                    "names no token service: {} is not sts or a key of token_services",
                    shown(
                        n,
                        &ctx.services.iter().map(String::as_str).collect::<Vec<_>>()
                    )
                ),
            )),
        },
    }
}

/// The second hop of a chain: its own grant and service, inheriting nothing, and no third hop.
fn validate_then(
    t: &RawExchange,
    first: &ExchangeConfig,
    key: &str,
    ctx: &mut ExchangeContext<'_>,
) -> Result<ExchangeConfig, ConfigError> {
    if first.grant == Grant::Ciba {
        return Err(ConfigError::new(
            key,
            "a ciba exchange has no second hop (the consent's token is the last)",
        ));
    }
    match t.grant.as_deref() {
        Some("jwt_bearer" | "token_exchange") => {}
        Some(_) => {
            return Err(ConfigError::new(
                format!("{key}.grant"),
                "a second hop's grant is jwt_bearer or token_exchange",
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{key}.grant"),
                "is required (jwt_bearer or token_exchange)",
            ))
        }
    }
    if t.sts.is_none() {
        return Err(ConfigError::new(
            format!("{key}.sts"),
            "is required (the token service of the second hop)",
        ));
    }
    let refused = [
        ("then", t.then.is_some(), "at most two hops"),
        ("actor", t.actor.is_some(), "a second hop has no actor"),
        (
            "expect_act",
            t.expect_act.is_some(),
            "a second hop has no actor",
        ),
    ];
    if let Some((name, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(ConfigError::new(format!("{key}.{name}"), *why));
    }
    validate_exchange(t, key, ctx)
}

pub(super) fn validate_exchange(
    e: &RawExchange,
    key: &str,
    ctx: &mut ExchangeContext<'_>,
) -> Result<ExchangeConfig, ConfigError> {
    let grant = match e.grant.as_deref() {
        None | Some("token_exchange") => Grant::TokenExchange,
        Some("jwt_bearer") => Grant::JwtBearer,
        Some("ciba") => Grant::Ciba,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{key}.grant"),
                format!(
                    "unknown grant {}; use token_exchange, jwt_bearer or ciba",
                    shown(other, &["token_exchange", "jwt_bearer", "ciba"])
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
    if grant != Grant::TokenExchange {
        let conflict = [
            ("actor", raw_actor.is_some()),
            ("requested_token_type", e.requested_token_type.is_some()),
            ("audience", !audience.is_empty()),
            ("resource", !resource.is_empty()),
        ];
        if let Some((name, _)) = conflict.iter().find(|(_, set)| *set) {
            let why = if grant == Grant::Ciba {
                "is not part of the ciba grant (OpenID CIBA); use extra_params if the STS wants it"
            } else {
                "is not part of the jwt_bearer grant (RFC 7523); use extra_params if the STS wants it"
            };
            return Err(ConfigError::new(format!("{key}.{name}"), why));
        }
    }
    if grant == Grant::Ciba {
        if !ctx.ciba {
            return Err(ConfigError::new(
                format!("{key}.grant"),
                "ciba needs sts.ciba (the backchannel authentication endpoint)",
            ));
        }
        if !e
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|t| t == "openid"))
        {
            return Err(ConfigError::new(
                format!("{key}.scope"),
                "must contain openid for the ciba grant",
            ));
        }
    }
    if expect_act && raw_actor.is_none() {
        return Err(ConfigError::new(
            format!("{key}.expect_act"),
            "needs an actor",
        ));
    }
    let actor = match raw_actor {
        None => None,
        Some(a) => Some(validate_actor(a, &format!("{key}.actor"), ctx)?),
    };
    let service = service(e.sts.as_deref(), key, ctx)?;
    if grant == Grant::Ciba && service != 0 {
        return Err(ConfigError::new(
            format!("{key}.sts"),
            "the ciba grant is configured on sts only (sts.ciba)",
        ));
    }
    let mut exchange = ExchangeConfig {
        grant,
        audience,
        resource,
        scope: e.scope.clone(),
        requested_token_type: e.requested_token_type.clone(),
        extra_params: extra,
        actor,
        expect_act,
        enforce_may_act: e.enforce_may_act.unwrap_or(true),
        policy: 0,
        introspect: None,
        service,
        then: None,
        dpop_required: false,
    };
    if let Some(t) = e.then.as_ref().and_then(|t| t.as_deref()) {
        let then = validate_then(t, &exchange, &format!("{key}.then"), ctx)?;
        exchange.then = Some(Box::new(then));
    }
    Ok(exchange)
}

fn validate_actor(
    a: RawActor,
    key: &str,
    ctx: &mut ExchangeContext<'_>,
) -> Result<ActorConfig, ConfigError> {
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
            Ok(ActorConfig {
                source: ActorSource::ClientCredentials {
                    scope: a.scope,
                    audience,
                },
                token_type,
            })
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
            Ok(ActorConfig {
                source: ActorSource::Header(header),
                token_type,
            })
        }
        other => Err(ConfigError::new(
            format!("{key}.source"),
            format!(
                "unknown source {}; use client_credentials or header",
                shown(other, &["client_credentials", "header"])
            ),
        )),
    }
}

pub(super) fn validate_match(m: RawMatch, key: &str) -> Result<RouteMatch, ConfigError> {
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
