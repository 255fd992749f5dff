//! The caller's tokens as the request carries them: the subject token from its header (one
//! copy, the configured scheme) and, for a delegation with a header actor, the actor token.

use crate::config::SubjectTokenConfig;
use crate::host::RequestHeaders;
use crate::token::{extract, Extracted};

/// Why a request has no usable subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoToken {
    /// No header, or another scheme: `on_missing_token` decides.
    Missing,
    /// A token that cannot be used: 401, with a reason safe to show.
    Malformed(&'static str),
}

/// The subject token: the header value it was cut from, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    value: String,
    start: usize,
    end: usize,
}

impl Subject {
    /// The token.
    pub fn token(&self) -> &str {
        self.value.get(self.start..self.end).unwrap_or_default()
    }
}

/// Reads the subject token. Envoy folds repeated `authorization` headers into one comma-joined
/// value (which fails the token format); other headers arrive as copies, so those are read as
/// a whole and two copies are refused.
pub fn subject<R: RequestHeaders + ?Sized>(
    req: &R,
    rules: &SubjectTokenConfig,
) -> Result<Subject, NoToken> {
    let value = if rules.header == "authorization" {
        req.header(&rules.header)
    } else {
        req.single_header(&rules.header)
            .map_err(|()| NoToken::Malformed("more than one token header"))?
    };
    let value = value.ok_or(NoToken::Missing)?;
    let (start, end) = match extract(Some(&value), &rules.prefix, rules.max_bytes) {
        Extracted::Token(t) => {
            // `t` is a slice of `value`: its offsets.
            let start = t.as_ptr() as usize - value.as_ptr() as usize;
            (start, start + t.len())
        }
        Extracted::Missing => return Err(NoToken::Missing),
        Extracted::Malformed(why) => return Err(NoToken::Malformed(why)),
    };
    Ok(Subject { value, start, end })
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
    fn two_copies_of_a_token_header_are_refused() {
        let r = rules("x-subject", "");
        let two = [("x-subject", "a"), ("x-subject", "b")];
        assert!(matches!(subject(&two[..], &r), Err(NoToken::Malformed(_))));
        assert_eq!(actor(&two[..], "x-subject", 64), None);
        assert_eq!(actor(&two[..1], "x-subject", 64).as_deref(), Some("a"));
        assert_eq!(actor(&[("x-subject", "a b")][..], "x-subject", 64), None);
    }
}
