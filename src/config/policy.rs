//! The rules of the authorizer's keys: `require` policies (the default and each route's) and
//! `output.claims_to_headers`.

use super::raw::*;
use super::values::*;
use super::*;

/// The most policies a configuration holds (the default and the routes' own); each verified
/// token is judged against all of them once.
pub(super) const MAX_POLICIES: usize = 64;

/// The most claim headers.
const MAX_CLAIM_HEADERS: usize = 32;

/// A `require` list: alternatives, each with at least one condition.
pub(super) fn validate_policy(raw: Vec<RawRequirement>, key: &str) -> Result<Policy, ConfigError> {
    let mut policy = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("{key}[{i}]");
        let scopes = r.scopes.unwrap_or_default();
        for s in &scopes {
            let k = format!("{key}.scopes");
            scope_tokens(s, &k)?;
            if s.contains(' ') {
                return Err(ConfigError::new(k, "must list one scope per string"));
            }
        }
        let mut claims = Vec::new();
        for (name, values) in r.claims.unwrap_or_default() {
            claim_name(&name, &format!("{key}.claims"))?;
            let values = values.into_vec();
            if values.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.claims.{name}"),
                    "must list at least one accepted value",
                ));
            }
            claims.push(ClaimRule { name, values });
        }
        let acr = r.acr.map(OneOrMany::into_vec).unwrap_or_default();
        for a in &acr {
            no_space_or_control(a, &format!("{key}.acr"))?;
            non_empty(a, &format!("{key}.acr"))?;
        }
        let max_age_s = match r.max_age_s {
            None => None,
            Some(w) => Some(whole(
                Some(w),
                0,
                0..=31_536_000,
                format!("{key}.max_age_s"),
            )?),
        };
        if scopes.is_empty() && claims.is_empty() && acr.is_empty() && max_age_s.is_none() {
            return Err(ConfigError::new(
                key,
                "must list scopes, claims, acr or max_age_s (an empty alternative would allow every token)",
            ));
        }
        policy.push(Requirement {
            scopes,
            claims,
            acr,
            max_age_s,
        });
    }
    Ok(policy)
}

/// `output.claims_to_headers`: each header one the filter may set, apart from every header the
/// filter already reads or writes, and named once.
pub(super) fn validate_claim_headers(
    raw: Option<Vec<RawClaimHeader>>,
    taken: &[&str],
) -> Result<Vec<ClaimHeader>, ConfigError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_CLAIM_HEADERS {
        return Err(ConfigError::new(
            "output.claims_to_headers",
            format!("must list at most {MAX_CLAIM_HEADERS} headers"),
        ));
    }
    let mut out: Vec<ClaimHeader> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("output.claims_to_headers[{i}]");
        claim_name(&r.claim, &format!("{key}.claim"))?;
        let header = settable_header(&r.header, &format!("{key}.header"))?;
        let same = |other: &str| folded(other) == folded(&header);
        if taken.iter().any(|t| same(t)) || out.iter().any(|c| same(&c.header)) {
            return Err(ConfigError::new(
                format!("{key}.header"),
                "must differ from every other header the filter reads or writes, also when \
                 '-' and '_' are read alike",
            ));
        }
        let separators = header.bytes().filter(|b| matches!(b, b'-' | b'_')).count();
        if separators > MAX_SEPARATORS {
            return Err(ConfigError::new(
                format!("{key}.header"),
                format!(
                    "may hold at most {MAX_SEPARATORS} '-' or '_' (each spelling an upstream may \
                     read as this header is removed from every request)"
                ),
            ));
        }
        out.push(ClaimHeader {
            claim: r.claim,
            aliases: aliases(&header),
            header,
        });
    }
    Ok(out)
}

/// The most `-` and `_` a claim header may hold: 2^n spellings are removed from each request.
const MAX_SEPARATORS: usize = 4;

/// A header name as CGI-style servers read it (`HTTP_X_TENANT`): `_` and `-` alike.
fn folded(name: &str) -> String {
    name.replace('_', "-")
}

/// Every other spelling of `header` with each `-` or `_` written either way.
fn aliases(header: &str) -> Vec<String> {
    let at: Vec<usize> = header
        .bytes()
        .enumerate()
        .filter(|(_, b)| matches!(b, b'-' | b'_'))
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    for mask in 0u32..(1 << at.len()) {
        let mut bytes = header.as_bytes().to_vec();
        for (bit, i) in at.iter().enumerate() {
            bytes[*i] = if mask & (1 << bit) != 0 { b'_' } else { b'-' };
        }
        let spelling = String::from_utf8_lossy(&bytes).into_owned();
        if spelling != header {
            out.push(spelling);
        }
    }
    out
}

/// A claim name: printable ASCII without spaces (a URI claim name is fine).
fn claim_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if !name.is_empty() && name.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "claim names must be printable ASCII without spaces",
        ))
    }
}
