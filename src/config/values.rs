//! Rules for single values: header names, URIs, printable text, and how an error may show a value.

use super::raw::Whole;
use super::ConfigError;

/// A written value as a refusal may quote it: only a near miss of one of the `accepted` words
/// (at most two edits from one, as a typo is), which a secret written under the wrong key never
/// is; anything else by its length alone.
pub(super) fn shown(v: &str, accepted: &[&str]) -> String {
    let near_miss = v.len() <= 64
        && v.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
        && accepted.iter().any(|a| strsim::levenshtein(v, a) <= 2);
    if near_miss {
        format!("{v:?}")
    } else {
        format!("(a value of {} bytes, not shown)", v.len())
    }
}

/// An environment variable's name as a refusal may quote it: only in the shape such names have
/// (`STS_CLIENT_SECRET`: upper-case words joined by `_`), which a secret written there by
/// mistake does not; anything else by its length alone.
pub(super) fn shown_env_name(v: &str) -> String {
    let words = v.split('_').collect::<Vec<_>>();
    let shaped = v.len() <= 64
        && words.len() >= 2
        && words.iter().all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        && v.starts_with(|c: char| c.is_ascii_uppercase());
    if shaped {
        format!("{v:?}")
    } else {
        format!("(a name of {} bytes, not shown)", v.len())
    }
}

/// A key the operator named (a token service's name) as a refusal may quote it: a short word;
/// anything else by its length alone.
pub(super) fn shown_key(v: &str) -> String {
    let word = v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if word {
        format!("{v:?}")
    } else {
        format!("(a key of {} bytes)", v.len())
    }
}

/// Headers the filter must never set or remove: framing, connection management, the host.
pub(super) const UNTOUCHABLE_HEADERS: [&str; 12] = [
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
pub(super) fn settable_header(v: &str, key: &str) -> Result<String, ConfigError> {
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
pub(super) fn no_space_or_control(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(ConfigError::new(
            key,
            "must not contain white space or control characters",
        ))
    } else {
        Ok(())
    }
}

/// The path of an endpoint the filter calls: absolute, no white space or control characters.
pub(super) fn call_path(v: &str, key: &str) -> Result<(), ConfigError> {
    if !v.starts_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            key,
            "must start with '/' and hold no whitespace",
        ));
    }
    Ok(())
}

pub(super) fn non_empty(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

pub(super) fn printable(v: &str, key: &str) -> Result<(), ConfigError> {
    if v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::new(key, "must be printable ASCII"))
    }
}

/// An absolute URI in the loose sense RFC 8693 needs: a scheme, a colon, no whitespace.
pub(super) fn uri(v: &str, key: &str) -> Result<(), ConfigError> {
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

pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn header_name(v: &str, key: &str) -> Result<String, ConfigError> {
    let lower = v.to_ascii_lowercase();
    if !lower.is_empty() && lower.bytes().all(is_tchar) {
        Ok(lower)
    } else {
        Err(ConfigError::new(key, "must be an HTTP header name"))
    }
}

/// RFC 6749 §3.3 scope tokens, space-separated.
pub(super) fn scope_tokens(scope: &str, key: &str) -> Result<(), ConfigError> {
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

/// A whole number of `range` (`default` when the key is absent), else an error naming `key`
/// and the bounds: one message whatever was written (a string, a fraction, a negative or too
/// large number).
pub(super) fn whole(
    v: Option<Whole>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    key: impl Into<String>,
) -> Result<u64, ConfigError> {
    match v.map_or(Some(default), |w| w.0) {
        Some(n) if range.contains(&n) => Ok(n),
        _ => {
            let (lo, hi) = (range.start(), range.end());
            Err(ConfigError::new(
                key,
                format!("must be a whole number from {lo} to {hi}"),
            ))
        }
    }
}
