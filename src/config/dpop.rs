//! `dpop` (RFC 9449): the rules a DPoP proof is held to, the routes that take DPoP-bound
//! tokens only, and `bound_tokens` of a trusted issuer.

use super::raw::{RawDpop, Whole};
use super::values::{shown, whole};
use super::{ConfigError, DpopConfig, JwsAlg};

/// The proofs' algorithms when `dpop.algorithms` is not written.
const DEFAULT_ALGORITHMS: [JwsAlg; 4] =
    [JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::Ps256, JwsAlg::EdDsa];

/// The top-level `dpop` block (absent: the defaults, DPoP accepted and not required).
pub(super) fn validate_dpop(raw: Option<RawDpop>) -> Result<DpopConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let algorithms = match raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::new(
                "dpop.algorithms",
                "must list at least one algorithm",
            ))
        }
        Some(names) => names
            .iter()
            .map(|n| asymmetric_algorithm(n, "dpop.algorithms", "DPoP proofs"))
            .collect::<Result<_, _>>()?,
    };
    let mut origins = Vec::new();
    for (i, o) in raw.origins.unwrap_or_default().into_iter().enumerate() {
        origins.push(origin(&o, &format!("dpop.origins[{i}]"))?);
    }
    Ok(DpopConfig {
        required: raw.required.unwrap_or(false),
        algorithms,
        max_age_s: whole(raw.max_age_s, 60, 1..=3600, "dpop.max_age_s")?,
        clock_skew_s: whole(raw.clock_skew_s, 5, 0..=300, "dpop.clock_skew_s")?,
        origins,
        replay_entries: replay_entries(raw.replay_entries)?,
    })
}

/// A route's `dpop`: only `required` may be written there.
pub(super) fn route_required(raw: RawDpop, key: &str) -> Result<bool, ConfigError> {
    let written = [
        ("algorithms", raw.algorithms.is_some()),
        ("max_age_s", raw.max_age_s.is_some()),
        ("clock_skew_s", raw.clock_skew_s.is_some()),
        ("origins", raw.origins.is_some()),
        ("replay_entries", raw.replay_entries.is_some()),
    ];
    if let Some((name, _)) = written.iter().find(|(_, w)| *w) {
        return Err(ConfigError::new(
            format!("{key}.{name}"),
            "is set once, in the top-level dpop (a route sets only required)",
        ));
    }
    raw.required
        .ok_or_else(|| ConfigError::new(format!("{key}.required"), "is required"))
}

/// `trusted_issuers[].bound_tokens`: whether the token's `cnf` binding is checked.
pub(super) fn bound_tokens(v: Option<&str>, key: &str) -> Result<bool, ConfigError> {
    match v {
        None | Some("enforce") => Ok(true),
        Some("ignore") => Ok(false),
        Some(other) => Err(ConfigError::new(
            key,
            format!(
                "unknown value {}; use enforce or ignore",
                shown(other, &["enforce", "ignore"])
            ),
        )),
    }
}

/// A JWS algorithm named under `key` for `what` (subject tokens, DPoP proofs): asymmetric
/// only, never `none` nor a MAC (RFC 8725 §3.1, RFC 9449 §4.2).
pub(super) fn asymmetric_algorithm(
    name: &str,
    key: &str,
    what: &str,
) -> Result<JwsAlg, ConfigError> {
    JwsAlg::from_name(name).ok_or_else(|| {
        let why =
            if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
                format!(
                    "{} is never accepted for {what}",
                    shown(name, &["none", "HS256", "HS384", "HS512"])
                )
            } else {
                format!(
                    "{} is not supported; use RS256/384/512, PS256/384/512, ES256 or EdDSA",
                    shown(name, &JwsAlg::NAMES)
                )
            };
        ConfigError::new(key, why)
    })
}

/// An external origin `scheme://host[:port]` (http or https, no path, query or user), kept in
/// lower case.
fn origin(v: &str, key: &str) -> Result<String, ConfigError> {
    let lower = v.to_ascii_lowercase();
    let authority = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or_default();
    let bad = |c: char| "/?#@\\".contains(c) || c.is_whitespace() || c.is_control();
    if authority.is_empty() || authority.contains(bad) {
        return Err(ConfigError::new(
            key,
            "must be an origin: http:// or https://, a host and perhaps a port, nothing after",
        ));
    }
    Ok(lower)
}

/// `dpop.replay_entries`: the slots of the table of proofs seen (default 65536).
fn replay_entries(v: Option<Whole>) -> Result<u32, ConfigError> {
    let n = whole(v, 65_536, 1024..=1_048_576, "dpop.replay_entries")?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
