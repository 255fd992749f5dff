//! RFC 9728 protected resource metadata: the document the filter answers itself (never
//! routed), and the `resource_metadata` URL that every 401 it sends names, as MCP clients
//! expect to find where to get a token.

use crate::config::ProtectedResource;
use crate::host::RequestHeaders;
use crate::path;
use crate::reply::LocalReply;

/// The metadata of one configuration.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    path: String,
    document: String,
    origin: String,
}

impl ResourceMetadata {
    /// Prepares the answer of `config`.
    pub fn new(config: &ProtectedResource) -> Self {
        ResourceMetadata {
            path: config.path.clone(),
            document: config.document.clone(),
            origin: config.origin.clone(),
        }
    }

    /// The answer to a request for the metadata path (`GET`; any other method 405); `None`
    /// for any other path.
    pub fn answer<R: RequestHeaders + ?Sized>(&self, req: &R) -> Option<LocalReply> {
        let raw = req.header(":path")?;
        if path::normalize(&raw).path != self.path.as_str() {
            return None;
        }
        Some(match req.header(":method").as_deref() {
            Some("GET") => LocalReply::metadata(&self.document),
            _ => LocalReply::method_not_allowed(),
        })
    }

    /// The metadata URL as this request's client reaches the resource: its scheme and
    /// authority, or the configured resource's origin when either could not be written into a
    /// challenge as it is.
    pub fn url_for<R: RequestHeaders + ?Sized>(&self, req: &R) -> String {
        let scheme = req.header(":scheme");
        let scheme = scheme.as_deref().filter(|s| *s == "http" || *s == "https");
        let authority = req.header(":authority").filter(|a| is_plain_authority(a));
        match (scheme, authority) {
            (Some(s), Some(a)) => format!("{s}://{a}{}", self.path),
            _ => format!("{}{}", self.origin, self.path),
        }
    }
}

/// A host and optional port that reads one way inside a quoted challenge parameter.
fn is_plain_authority(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> ResourceMetadata {
        ResourceMetadata::new(&ProtectedResource {
            path: "/.well-known/oauth-protected-resource".into(),
            document: r#"{"resource":"https://mcp.example.com"}"#.into(),
            origin: "https://mcp.example.com".into(),
        })
    }

    #[test]
    fn the_document_is_answered_at_its_path_for_get_only() {
        let m = metadata();
        let at = |method: &str, path: &str| {
            let req: &[(&str, &str)] = &[(":method", method), (":path", path)];
            m.answer(req)
        };
        let r = at("GET", "/.well-known/oauth-protected-resource?x=1").unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, r#"{"resource":"https://mcp.example.com"}"#)
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let dotted = at("GET", "/x/../.well-known/oauth-protected-resource").unwrap();
        assert_eq!(dotted.status, 200, "read as the server reads it");
        let post = at("POST", "/.well-known/oauth-protected-resource").unwrap();
        assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
        assert!(at("GET", "/.well-known/oauth-protected-resource/more").is_none());
        assert!(at("GET", "/api").is_none());
    }

    #[test]
    fn the_url_is_the_clients_own_unless_it_could_break_the_challenge() {
        let m = metadata();
        let path = "/.well-known/oauth-protected-resource";
        let url = |scheme: &str, authority: &str| {
            let req: &[(&str, &str)] = &[(":scheme", scheme), (":authority", authority)];
            m.url_for(req)
        };
        assert_eq!(
            url("http", "localhost:10000"),
            format!("http://localhost:10000{path}")
        );
        assert_eq!(
            url("https", "[::1]:8443"),
            format!("https://[::1]:8443{path}")
        );
        for (scheme, authority) in [
            ("http", "evil\", error=\"x"),
            ("http", "a b"),
            ("http", "a\\b"),
            ("javascript", "host"),
            ("http", ""),
        ] {
            assert_eq!(
                url(scheme, authority),
                format!("https://mcp.example.com{path}"),
                "{scheme} {authority}"
            );
        }
        let none: &[(&str, &str)] = &[];
        assert_eq!(m.url_for(none), format!("https://mcp.example.com{path}"));
    }
}
