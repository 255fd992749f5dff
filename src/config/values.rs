//! Rules for single values: header names, URIs, printable text, and how an error may show a value.

use super::raw::Whole;
use super::ConfigError;

/// A config value as an error line may show it: only a short word that cannot be a secret or
/// key material; anything else by its length alone.
pub(super) fn shown(v: &str) -> String {
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
