//! The path the server behind the proxy will serve, as route rules compare it: the query and
//! fragment dropped, percent-encoded unreserved characters decoded, dot segments removed
//! (RFC 3986 §5.2.4), slashes merged. A path that a server could still read in more than one way
//! (any percent-encoding left, a backslash, a control or non-ASCII byte, an empty segment, a path
//! parameter) is not *plain*, and a bypass rule never matches it.

use std::borrow::Cow;

/// A request path after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// The path as the server will resolve it; always starts with `/`.
    pub path: Cow<'a, str>,
    /// True when nothing in the raw path could be read another way; only a plain path can be
    /// bypassed.
    pub plain: bool,
}

/// Normalizes a raw `:path` value (see the module doc).
pub fn normalize(raw: &str) -> NormalPath<'_> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    if path.starts_with('/') && is_simple(path) {
        return NormalPath {
            path: Cow::Borrowed(path),
            plain: true,
        };
    }
    let mut plain = path.starts_with('/');
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        decoded.push('/');
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    let v = h * 16 + l;
                    if is_unreserved(v) {
                        decoded.push(char::from(v));
                    } else {
                        plain = false;
                        decoded.push('%');
                        decoded.push(char::from(HEX[usize::from(h)]));
                        decoded.push(char::from(HEX[usize::from(l)]));
                    }
                    i += 3;
                }
                _ => {
                    plain = false;
                    decoded.push('%');
                    i += 1;
                }
            }
            continue;
        }
        if b == b'\\' || b == b';' || !(0x20..0x7f).contains(&b) {
            plain = false;
        }
        // Not a '%' byte: copy the whole character (non-ASCII ones too).
        let len = utf8_len(b);
        decoded.push_str(path.get(i..i + len).unwrap_or("\u{fffd}"));
        i += len.max(1);
    }
    if decoded.contains("//") {
        plain = false;
    }
    let mut out = remove_dot_segments(&decoded);
    while out.contains("//") {
        out = out.replace("//", "/");
    }
    NormalPath {
        path: Cow::Owned(out),
        plain,
    }
}

/// The other ways a server may read a path that is not plain, each resolved as
/// [`normalize`] resolves (dot segments removed, slashes merged): with `;` path parameters
/// dropped (servlet containers), with every percent-encoding decoded (repeatedly, as a server
/// that decodes twice would) and backslashes read as slashes, and with both. A rule that
/// restricts must meet the path under every one of them.
pub fn readings(raw: &str) -> [String; 3] {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    let decoded = decode_all(path);
    [
        resolve(&without_parameters(path)),
        resolve(&decoded),
        resolve(&without_parameters(&decoded)),
    ]
}

/// `path` with each segment's `;` parameters dropped (`/a;x/b` → `/a/b`).
fn without_parameters(path: &str) -> String {
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// `path` with every percent-encoding decoded until none is left (at most four rounds), and
/// backslashes as slashes.
fn decode_all(path: &str) -> String {
    let mut text = path.replace('\\', "/");
    for _ in 0..4 {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(&text).collect();
        let next = String::from_utf8_lossy(&bytes).replace('\\', "/");
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// A path as a server resolves it: absolute, slashes merged (before dot segments go, as
/// Envoy's `merge_slashes` does; [`normalize`] reads them the other way round), dot segments
/// removed.
fn resolve(path: &str) -> String {
    let mut merged = format!("/{path}");
    while merged.contains("//") {
        merged = merged.replace("//", "/");
    }
    remove_dot_segments(&merged)
}

/// Whether `path` matches `prefix` on whole segments: `/orders` matches `/orders` and
/// `/orders/…`, never `/orders-admin`. A prefix ending in `/` matches what starts with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a configured `path_prefix` is already in normal, plain form (the config refuses one
/// that is not: it could never match as written).
pub fn is_normal_prefix(prefix: &str) -> bool {
    let n = normalize(prefix);
    n.plain && n.path == prefix
}

/// No byte that normalization would change or that makes a path ambiguous.
fn is_simple(path: &str) -> bool {
    !path.contains("//")
        && !path.contains("/.")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: Option<&u8>) -> Option<u8> {
    char::from(*b?)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> (String, bool) {
        let p = normalize(raw);
        (p.path.into_owned(), p.plain)
    }

    #[test]
    fn plain_paths_pass_through_without_allocation() {
        let p = normalize("/orders/42?x=1#frag");
        assert!(matches!(p.path, Cow::Borrowed("/orders/42")));
        assert!(p.plain);
    }

    #[test]
    fn dot_segments_are_removed_per_rfc3986() {
        assert_eq!(n("/healthz/../admin"), ("/admin".into(), true));
        assert_eq!(n("/healthz/./x"), ("/healthz/x".into(), true));
        assert_eq!(n("/a/b/c/./../../g"), ("/a/g".into(), true));
        assert_eq!(n("/healthz/.."), ("/".into(), true));
        assert_eq!(n("/healthz/."), ("/healthz/".into(), true));
        assert_eq!(n("/../../etc"), ("/etc".into(), true));
        assert_eq!(n("/.well-known/x"), ("/.well-known/x".into(), true));
        assert_eq!(n("/a/..b/c"), ("/a/..b/c".into(), true));
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_before_dot_removal() {
        assert_eq!(n("/healthz/%2e%2e/admin"), ("/admin".into(), true));
        assert_eq!(n("/healthz/%2E%2e/admin"), ("/admin".into(), true));
        assert_eq!(n("/healthz/.%2e/admin"), ("/admin".into(), true));
        assert_eq!(n("/%68ealthz"), ("/healthz".into(), true));
    }

    #[test]
    fn what_a_server_could_read_another_way_is_not_plain() {
        for raw in [
            "/healthz/..%2fadmin",
            "/healthz/..%2Fadmin",
            "/healthz%2f..%2fadmin",
            "/healthz/..%5cadmin",
            "/healthz\\..\\admin",
            "/healthz/..\\admin",
            "/healthz/%252e%252e/admin",
            "/healthz/%c0%ae%c0%ae/admin",
            "/healthz/..;/admin",
            "/healthz;x/../admin",
            "/healthz//../admin",
            "//healthz",
            "/healthz/%00",
            "/healthz/\u{1}",
            "/healthz/%zz",
            "/healthz/%",
            "/healthz/é",
            "healthz",
            "*",
        ] {
            assert!(!normalize(raw).plain, "{raw:?} counted as plain");
        }
    }

    #[test]
    fn non_plain_paths_still_normalize_for_exchange_rules() {
        assert_eq!(n("//orders//42").0, "/orders/42");
        assert_eq!(n("/healthz/..%2fadmin").0, "/healthz/..%2Fadmin");
    }

    #[test]
    fn normalization_is_idempotent_on_plain_results() {
        for raw in ["/a/./b/../c", "/%2e%2e/x", "/x/%7e/y/.."] {
            let once = n(raw).0;
            assert_eq!(n(&once), (once.clone(), true), "{raw}");
        }
    }

    #[test]
    fn a_path_that_is_not_plain_is_read_every_way_a_server_may_read_it() {
        assert_eq!(readings("/admin;x/users")[0], "/admin/users");
        assert_eq!(readings("/admin%2Fusers?q=1")[1], "/admin/users");
        assert_eq!(
            readings("/admin%252fusers")[1],
            "/admin/users",
            "decoded twice"
        );
        assert_eq!(readings("/a\\..\\admin")[1], "/admin");
        assert_eq!(readings("/public/..;/admin")[0], "/admin");
        assert_eq!(readings("/public%3bx/..%2Fadmin")[2], "/admin");
        assert_eq!(
            readings("/a//../admin")[0],
            "/admin",
            "slashes merged first"
        );
        assert_eq!(readings("/a/b")[2], "/a/b");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/orders", "/orders"));
        assert!(prefix_matches("/orders", "/orders/42"));
        assert!(!prefix_matches("/orders", "/orders-admin"));
        assert!(!prefix_matches("/orders", "/ordersX"));
        assert!(!prefix_matches("/orders", "/order"));
        assert!(prefix_matches("/orders/", "/orders/42"));
        assert!(!prefix_matches("/orders/", "/orders"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn configured_prefixes_must_be_normal() {
        assert!(is_normal_prefix("/healthz"));
        assert!(is_normal_prefix("/api/v1/"));
        for bad in [
            "/a/../b", "/a/./b", "/a%2fb", "/a//b", "/a?x", "/a\\b", "/%61",
        ] {
            assert!(!is_normal_prefix(bad), "{bad}");
        }
    }
}
