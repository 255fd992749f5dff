//! The caller's tokens as the request carries them: the subject token from its header (one
//! copy, the configured scheme) and, for a delegation with a header actor, the actor token.

use crate::config::SubjectTokenConfig;
use crate::host::{HttpCall, RequestHeaders, Unusable};
use crate::token::{extract, Extracted};

/// Why a request has no usable subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoToken {
    /// No header, or another scheme: `on_missing_token` decides.
    Missing,
    /// A token that cannot be used: 401, with a reason safe to show.
    Malformed(&'static str),
}

/// The header a DPoP proof comes in (RFC 9449 §4.1).
pub const DPOP_HEADER: &str = "dpop";

/// The `Authorization` scheme of a DPoP-bound token (RFC 9449 §7.1).
const DPOP_SCHEME: &str = "DPoP ";

/// The subject token: the header value it was cut from, where, and whether it came with the
/// `DPoP` scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    value: String,
    start: usize,
    end: usize,
    dpop: bool,
}

impl Subject {
    /// The token.
    pub fn token(&self) -> &str {
        self.value.get(self.start..self.end).unwrap_or_default()
    }

    /// Whether it came as `Authorization: DPoP …`.
    pub fn is_dpop(&self) -> bool {
        self.dpop
    }
}

/// What a request with a DPoP-bound token brings beside it: its proof, and what the proof must
/// name (RFC 9449 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopRequest {
    /// The one `DPoP` header, or why there is none to check.
    pub proof: Result<String, &'static str>,
    /// `:method`.
    pub method: String,
    /// `:scheme`.
    pub scheme: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
}

/// Reads the DPoP proof and the request's method and URI.
pub fn dpop_request<R: RequestHeaders + ?Sized>(req: &R) -> DpopRequest {
    let proof = match req.single_header(DPOP_HEADER) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err("DPoP proof missing"),
        Err(Unusable::Repeated) => Err("more than one DPoP header"),
        Err(Unusable::NotText) => Err("DPoP proof is not text"),
    };
    let pseudo = |name: &str| req.header(name).unwrap_or_default();
    DpopRequest {
        proof,
        method: pseudo(":method"),
        scheme: pseudo(":scheme"),
        authority: pseudo(":authority"),
        path: pseudo(":path"),
    }
}

/// Reads the subject token. Envoy folds repeated `authorization` headers into one comma-joined
/// value, refused when any of its parts holds a credential of the configured scheme (so
/// `Basic x,Bearer t` is never passed on as "another scheme"); other headers arrive as copies,
/// so those are read as a whole and two copies are refused. A value that is not UTF-8 text is
/// no token.
pub fn subject<R: RequestHeaders + ?Sized>(
    req: &R,
    rules: &SubjectTokenConfig,
) -> Result<Subject, NoToken> {
    let value = if rules.header == "authorization" {
        req.token_header(&rules.header)
    } else {
        req.single_header(&rules.header)
    }
    .map_err(|why| match why {
        Unusable::Repeated => NoToken::Malformed("more than one token header"),
        Unusable::NotText => NoToken::Malformed("token header is not text"),
    })?;
    let value = value.ok_or(NoToken::Missing)?;
    // DPoP-bound tokens come in `Authorization` only, beside the configured scheme.
    let dpop_allowed = rules.header == "authorization" && !rules.prefix.is_empty();
    let mut dpop = false;
    let extracted = match extract(Some(&value), &rules.prefix, rules.max_bytes) {
        Extracted::Missing if dpop_allowed => {
            dpop = true;
            extract(Some(&value), DPOP_SCHEME, rules.max_bytes)
        }
        other => other,
    };
    let (start, end) = match extracted {
        Extracted::Token(t) => {
            // `t` is a slice of `value`: its offsets.
            let start = t.as_ptr() as usize - value.as_ptr() as usize;
            (start, start + t.len())
        }
        Extracted::Missing
            if joined_with_scheme(&value, &rules.prefix)
                || (dpop_allowed && joined_with_scheme(&value, DPOP_SCHEME)) =>
        {
            return Err(NoToken::Malformed("repeated authorization headers"))
        }
        Extracted::Missing => return Err(NoToken::Missing),
        Extracted::Malformed(why) => return Err(NoToken::Malformed(why)),
    };
    Ok(Subject {
        value,
        start,
        end,
        dpop,
    })
}

/// Whether a comma-joined value has a part that starts with the configured scheme.
fn joined_with_scheme(value: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        && value.contains(',')
        && value
            .split(',')
            .any(|part| !matches!(extract(Some(part), prefix, usize::MAX), Extracted::Missing))
}

/// The trace context a request carries (W3C `traceparent`/`tracestate`, Envoy's
/// `x-request-id`, B3 single and multi headers), passed on to the calls made for it so that the
/// token service's spans join the caller's trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext(Option<Box<[(String, String)]>>);

/// The headers of a trace context.
pub const TRACE_HEADERS: [&str; 9] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The longest trace header value passed on (W3C's `tracestate` is at most 512 bytes).
const MAX_TRACE_VALUE: usize = 512;

impl TraceContext {
    /// The trace context of `req`, in one read of its headers.
    pub fn of<R: RequestHeaders + ?Sized>(req: &R) -> TraceContext {
        let found: Vec<(String, String)> = (req.headers_among(&TRACE_HEADERS).into_iter())
            .filter(|(_, v)| v.len() <= MAX_TRACE_VALUE && !v.chars().any(char::is_control))
            .collect();
        TraceContext((!found.is_empty()).then(|| found.into()))
    }

    /// `call` with these headers added (a call made for the request).
    pub fn on(&self, mut call: HttpCall) -> HttpCall {
        call.headers
            .extend(self.0.iter().flat_map(|h| h.iter().cloned()));
        call
    }
}

/// Reads a header actor token: exactly one copy of `header`, a well-formed token of at most
/// `max_bytes`. Two copies would leave the STS and the upstream to guess which one counts.
pub fn actor<R: RequestHeaders + ?Sized>(
    req: &R,
    header: &str,
    max_bytes: usize,
) -> Option<String> {
    let value = req.single_header(header).ok()??;
    match extract(Some(&value), "", max_bytes) {
        Extracted::Token(t) => Some(t.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(header: &str, prefix: &str) -> SubjectTokenConfig {
        SubjectTokenConfig {
            header: header.into(),
            prefix: prefix.into(),
            token_type: "urn:x".into(),
            max_bytes: 64,
        }
    }

    #[test]
    fn the_subject_is_cut_from_its_header() {
        let r = rules("authorization", "Bearer ");
        let s = subject(&[("authorization", "  Bearer abc ")][..], &r).unwrap();
        assert_eq!(s.token(), "abc");
        assert_eq!(subject(&[][..], &r), Err(NoToken::Missing));
        assert_eq!(
            subject(&[("authorization", "Basic x")][..], &r),
            Err(NoToken::Missing)
        );
        assert!(matches!(
            subject(&[("authorization", "Bearer a,b")][..], &r),
            Err(NoToken::Malformed(_))
        ));
    }

    #[test]
    fn joined_authorization_headers_holding_the_scheme_are_refused() {
        let r = rules("authorization", "Bearer ");
        for joined in [
            "Basic x,Bearer t",
            "Basic x, bearer t",
            "Digest a=1,  BEARER t",
            "Basic x,Bearer",
            "Basic x,Bearer\tt",
        ] {
            let got = subject(&[("authorization", joined)][..], &r);
            assert!(
                matches!(got, Err(NoToken::Malformed(_))),
                "{joined}: {got:?}"
            );
        }
        // Another scheme alone, or with parameters that merely mention the word, is another scheme.
        for other in [
            "Basic x",
            "Digest user=\"Bearer t\", realm=r",
            "Basic x,Basic y",
        ] {
            let got = subject(&[("authorization", other)][..], &r);
            assert_eq!(got, Err(NoToken::Missing), "{other}");
        }
    }

    #[test]
    fn a_token_header_that_is_not_text_is_malformed() {
        use crate::host::RawHeaders;
        let r = rules("authorization", "Bearer ");
        let raw: [(&str, &[u8]); 1] = [("authorization", b"Bearer \xff")];
        let got = subject(&RawHeaders(&raw), &r);
        assert!(matches!(got, Err(NoToken::Malformed(_))), "{got:?}");
        let r = rules("x-subject", "");
        let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-subject", b"\xe9")];
        assert!(matches!(
            subject(&RawHeaders(&raw), &r),
            Err(NoToken::Malformed(_))
        ));
        let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-actor", b"ok")];
        assert_eq!(
            actor(&RawHeaders(&raw), "x-actor", 64).as_deref(),
            Some("ok")
        );
        let raw: [(&str, &[u8]); 1] = [("x-actor", b"\xe9")];
        assert_eq!(actor(&RawHeaders(&raw), "x-actor", 64), None);
    }

    #[test]
    fn two_copies_of_a_token_header_are_refused() {
        let r = rules("x-subject", "");
        let two = [("x-subject", "a"), ("x-subject", "b")];
        assert!(matches!(subject(&two[..], &r), Err(NoToken::Malformed(_))));
        assert_eq!(actor(&two[..], "x-subject", 64), None);
        assert_eq!(actor(&two[..1], "x-subject", 64).as_deref(), Some("a"));
        assert_eq!(actor(&[("x-subject", "a b")][..], "x-subject", 64), None);
    }
}
