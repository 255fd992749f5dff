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
        if scopes.is_empty() && claims.is_empty() {
            return Err(ConfigError::new(
                key,
                "must list scopes or claims (an empty alternative would allow every token)",
            ));
        }
        policy.push(Requirement { scopes, claims });
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
        if taken.contains(&header.as_str()) || out.iter().any(|c| c.header == header) {
            return Err(ConfigError::new(
                format!("{key}.header"),
                "must differ from every other header the filter reads or writes",
            ));
        }
        out.push(ClaimHeader {
            claim: r.claim,
            header,
        });
    }
    Ok(out)
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
