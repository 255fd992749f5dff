//! What an upstream's `WWW-Authenticate` challenges (RFC 9110 §11.6.1) ask of the client: a new
//! token (no error code, or `error="invalid_token"`), or something more that a new token alone
//! does not give (`insufficient_scope`, RFC 9470's `insufficient_user_authentication`, Entra's
//! `insufficient_claims`, …). Only the `error` auth-param of each challenge is read; quoted
//! strings are read as strings, so an `error=` inside another parameter's value counts for
//! nothing.

/// Whether the challenges of a 401 (each header value; a value may hold several challenges)
/// are about the token itself: no challenge names an error other than `invalid_token`.
pub fn about_the_token<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .flat_map(errors)
        .all(|code| code.eq_ignore_ascii_case("invalid_token"))
}

/// The values of every `error` auth-param in one header value, in order. A value that does not
/// parse as challenges yields what was read before the fault, and a marker that is not
/// `invalid_token`, so that a challenge the filter cannot read never evicts.
fn errors(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        // A scheme, or a parameter name, or a token68.
        let (word, after) = token(rest);
        if word.is_empty() {
            out.push(UNREADABLE.to_string());
            return out;
        }
        let after_ws = after.trim_start_matches([' ', '\t']);
        match after_ws.strip_prefix('=') {
            // `name = value`: an auth-param (BWS around `=` allowed).
            Some(v) if !v.starts_with('=') => {
                let v = v.trim_start_matches([' ', '\t']);
                let Some((param, tail)) = param_value(v) else {
                    out.push(UNREADABLE.to_string());
                    return out;
                };
                if word.eq_ignore_ascii_case("error") {
                    out.push(param);
                }
                rest = tail;
            }
            // A token68 (`abc==`) or a scheme name: nothing to read.
            _ => rest = after_ws.trim_start_matches('='),
        }
        rest = rest.trim_start_matches([' ', '\t', ',']);
    }
    out
}

/// What an error marker reads as when a challenge cannot be parsed.
const UNREADABLE: &str = "unreadable";

/// A token (RFC 9110 `tchar`s, and `/` for a token68) at the start of `s`, and what follows it.
fn token(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// An auth-param's value at the start of `s` (a token or a quoted string, unescaped), and what
/// follows it; `None` for a quoted string that never closes.
fn param_value(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let (t, tail) = token(s);
        return Some((t.to_string(), tail));
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?.1),
            '"' => return Some((value, &quoted[i + 1..])),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_without_an_error_or_with_invalid_token_is_about_the_token() {
        for v in [
            "Bearer",
            "Bearer realm=\"api\"",
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"expired\"",
            "Bearer error=invalid_token",
            "Bearer ERROR = \"Invalid_Token\"",
            "Basic realm=\"x\", Bearer realm=\"y\"",
            "Negotiate abc123==",
        ] {
            assert!(about_the_token([v]), "{v}");
        }
        assert!(about_the_token(Vec::<&str>::new()), "no challenge at all");
    }

    #[test]
    fn a_challenge_that_asks_for_more_than_a_new_token_is_not() {
        for v in [
            "Bearer error=\"insufficient_scope\", scope=\"orders:write\"",
            "Bearer error=\"insufficient_user_authentication\", acr_values=\"phr\"",
            "Bearer error=\"insufficient_claims\", claims=\"eyJ9\"",
            "Bearer realm=\"a\",error=insufficient_scope",
            "DPoP error=\"use_dpop_nonce\"",
            "Bearer error=\"invalid_token\", Bearer error=\"insufficient_scope\"",
        ] {
            assert!(!about_the_token([v]), "{v}");
        }
        assert!(!about_the_token([
            "Bearer error=\"invalid_token\"",
            "Bearer error=\"insufficient_scope\""
        ]));
    }

    #[test]
    fn an_error_inside_another_parameters_quoted_value_counts_for_nothing() {
        let v = "Bearer error_description=\"error=insufficient_scope\", realm=\"a\\\"error=x\"";
        assert!(about_the_token([v]));
        let v = "Bearer error_description=\"x, error=invalid_token\", error=\"insufficient_scope\"";
        assert!(!about_the_token([v]));
    }

    #[test]
    fn a_challenge_that_does_not_parse_never_evicts() {
        for v in ["Bearer error=\"invalid_token", "Bearer error=\"a\" \u{1}"] {
            assert!(!about_the_token([v]), "{v:?}");
        }
    }
}
