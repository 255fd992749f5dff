//! The subject token as the request header carries it: the configured scheme, one RFC 6750
//! b64token, a bounded size.

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
    // Proxies strip optional white space around a field value; a host may not have.
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let rest = if prefix.is_empty() {
        value
    } else {
        let (v, p) = (value.as_bytes(), prefix.as_bytes());
        let scheme = prefix.trim_end().as_bytes();
        if v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p) {
            // The prefix is ASCII, so this cut lands on a char boundary.
            value.get(p.len()..).unwrap_or_default()
        } else if v.eq_ignore_ascii_case(scheme) {
            return Extracted::Malformed("no token after the scheme");
        } else if !scheme.is_empty()
            && v.len() > scheme.len()
            && v[..scheme.len()].eq_ignore_ascii_case(scheme)
            && !is_tchar(v[scheme.len()])
        {
            // The configured scheme, then something other than its separator (a tab, a comma,
            // a control byte): a bearer credential gone wrong, not another scheme.
            return Extracted::Malformed("malformed credentials after the scheme");
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

/// RFC 9110 §5.6.2 `tchar`: what an auth-scheme name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}
