//! Reading the caller's token: extraction from the request header, the unverified `exp` of a
//! JWT (only ever used to shorten a cache lifetime), and the short hash that logs carry.

use jwt_compact::{Empty, UntrustedToken};
use sha2::{Digest, Sha256};

/// What the subject header held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// A well-formed token.
    Token(&'a str),
    /// No header, or a header with another scheme.
    Missing,
    /// The scheme matched but the token is unusable; the reason is safe to show the client.
    Malformed(&'static str),
}

/// Extracts the token from a header value: `prefix` is matched case-insensitively (an empty
/// prefix takes the whole value), the token must be an RFC 6750 `b64token` of at most
/// `max_bytes`.
pub fn extract<'a>(value: Option<&'a str>, prefix: &str, max_bytes: usize) -> Extracted<'a> {
    let Some(value) = value else {
        return Extracted::Missing;
    };
    let rest = if prefix.is_empty() {
        value
    } else {
        let (v, p) = (value.as_bytes(), prefix.as_bytes());
        if v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p) {
            // The prefix is ASCII, so this cut lands on a char boundary.
            value.get(p.len()..).unwrap_or_default()
        } else if value.trim().eq_ignore_ascii_case(prefix.trim()) {
            return Extracted::Malformed("no token after the scheme");
        } else {
            return Extracted::Missing;
        }
    };
    let token = rest.trim_matches(|c| c == ' ' || c == '\t');
    if token.is_empty() {
        return Extracted::Malformed("no token after the scheme");
    }
    if token.len() > max_bytes {
        return Extracted::Malformed("token too large");
    }
    if !is_b64token(token) {
        return Extracted::Malformed("token is not a valid bearer token");
    }
    Extracted::Token(token)
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The `exp` claim of a JWT, read without verifying it, in seconds since the epoch. Safe only for
/// shortening a lifetime: a forged value can only make the caller's own entry expire sooner.
pub fn unverified_exp(token: &str) -> Option<u64> {
    let parsed = UntrustedToken::new(token).ok()?;
    let claims = parsed.deserialize_claims_unchecked::<Empty>().ok()?;
    claims
        .expiration
        .map(|exp| u64::try_from(exp.timestamp()).unwrap_or(0))
}

/// A short, non-reversible tag for a token, for log lines.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    const P: &str = "Bearer ";

    #[test]
    fn bearer_scheme_is_matched_case_insensitively() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr   abc  "] {
            assert_eq!(extract(Some(v), P, 100), Extracted::Token("abc"), "{v}");
        }
    }

    #[test]
    fn other_schemes_and_absent_headers_count_as_missing() {
        assert_eq!(extract(None, P, 100), Extracted::Missing);
        assert_eq!(
            extract(Some("Basic dXNlcjpwdw=="), P, 100),
            Extracted::Missing
        );
        assert_eq!(extract(Some("Bearerabc"), P, 100), Extracted::Missing);
        assert_eq!(extract(Some(""), P, 100), Extracted::Missing);
    }

    #[test]
    fn scheme_without_token_is_malformed() {
        assert!(matches!(
            extract(Some("Bearer"), P, 100),
            Extracted::Malformed(_)
        ));
        assert!(matches!(
            extract(Some("Bearer    "), P, 100),
            Extracted::Malformed(_)
        ));
        assert!(matches!(
            extract(Some("x-token"), "", 100),
            Extracted::Token("x-token")
        ));
        assert!(matches!(
            extract(Some("  "), "", 100),
            Extracted::Malformed(_)
        ));
    }

    #[test]
    fn size_limit_is_inclusive() {
        let at = "a".repeat(16);
        let over = "a".repeat(17);
        assert_eq!(
            extract(Some(&format!("Bearer {at}")), P, 16),
            Extracted::Token(&at)
        );
        assert_eq!(
            extract(Some(&format!("Bearer {over}")), P, 16),
            Extracted::Malformed("token too large")
        );
    }

    #[test]
    fn only_b64token_characters_are_accepted() {
        assert_eq!(
            extract(Some("Bearer a.b-c_d~e+f/g=="), P, 100),
            Extracted::Token("a.b-c_d~e+f/g==")
        );
        for bad in [
            "Bearer a b",
            "Bearer a\"b",
            "Bearer é",
            "Bearer a=b",
            "Bearer ==",
            "Bearer a,b",
        ] {
            assert!(
                matches!(extract(Some(bad), P, 100), Extracted::Malformed(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn multibyte_values_never_split_a_char() {
        assert_eq!(extract(Some("Beéé"), P, 100), Extracted::Missing);
        assert_eq!(extract(Some("é"), P, 100), Extracted::Missing);
    }

    fn jwt(claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        format!("{h}.{c}.sig")
    }

    #[test]
    fn exp_is_read_from_jwts_only() {
        assert_eq!(
            unverified_exp(&jwt(r#"{"exp":1700000000,"sub":"u"}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(unverified_exp(&jwt(r#"{"sub":"u"}"#)), None);
        assert_eq!(unverified_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(unverified_exp("opaque-token"), None);
        assert_eq!(unverified_exp("a.b.c"), None);
    }

    #[test]
    fn fingerprint_is_short_stable_and_hides_the_token() {
        let f = fingerprint("secret-token");
        assert_eq!(f.len(), 8);
        assert_eq!(f, fingerprint("secret-token"));
        assert_ne!(f, fingerprint("secret-token2"));
        assert!(!f.contains("secret"));
    }
}
