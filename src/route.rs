//! Route rules: the first rule whose authority, path prefix (on whole segments of the
//! normalized path, see [`crate::path`]) and method match picks the exchange or a bypass. A bypass
//! rule matches only a plain path; a path that is not plain is matched under every reading a
//! server may make of it, and refused when two readings pick different rules (a stricter
//! route's policy is never escaped by a spelling).

use crate::config::{ConfigError, Route, RouteAction};
use crate::host::RequestHeaders;
use crate::path::{is_normal_prefix, normalize, prefix_matches, readings};

/// A path whose readings (see [`readings`]) fall under different route rules: refused, since
/// the filter cannot tell which rule's policy the server behind it will serve it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

/// The route rules of a configuration, checked and ready to match.
#[derive(Debug, Clone)]
pub struct Routes {
    rules: Vec<Route>,
    /// Some rule has a path prefix: the path is read and normalized.
    needs_path: bool,
}

impl Routes {
    /// Checks the rules: a `path_prefix` must itself be a normalized, plain path (as written it
    /// could never match otherwise).
    pub fn compile(rules: &[Route]) -> Result<Routes, ConfigError> {
        for (i, r) in rules.iter().enumerate() {
            if let Some(p) = &r.matcher.path_prefix {
                if !is_normal_prefix(p) {
                    return Err(ConfigError::new(
                        format!("routes[{i}].match.path_prefix"),
                        "must be a normalized path: no dot segments, percent-encoding, backslash, ';', '?', '#' or empty segment",
                    ));
                }
            }
        }
        Ok(Routes {
            rules: rules.to_vec(),
            needs_path: rules.iter().any(|r| r.matcher.path_prefix.is_some()),
        })
    }

    /// The action of the first rule the request meets; the default exchange when none.
    /// `Err` for a path that is not plain and whose readings fall under different rules.
    pub fn select<R: RequestHeaders + ?Sized>(&self, req: &R) -> Result<RouteAction, Ambiguous> {
        if self.rules.is_empty() {
            return Ok(RouteAction::Exchange(0));
        }
        let raw = if self.needs_path {
            req.header(":path")
        } else {
            None
        };
        let mut seen = Seen::default();
        let Some(raw) = raw else {
            return Ok(select(&self.rules, None, true, req, &mut seen));
        };
        let path = normalize(&raw);
        let action = select(&self.rules, Some(&path.path), path.plain, req, &mut seen);
        if path.plain {
            return Ok(action);
        }
        for reading in readings(&raw) {
            if select(&self.rules, Some(&reading), false, req, &mut seen) != action {
                return Err(Ambiguous);
            }
        }
        Ok(action)
    }
}

/// The request's authority and method, read once when a rule first asks.
#[derive(Default)]
struct Seen {
    authority: Option<Option<String>>,
    method: Option<Option<String>>,
}

/// The first rule that `path` (normalized; `plain` when a bypass may match it) and the request
/// meet.
fn select<R: RequestHeaders + ?Sized>(
    routes: &[Route],
    path: Option<&str>,
    plain: bool,
    req: &R,
    seen: &mut Seen,
) -> RouteAction {
    let Seen { authority, method } = seen;
    for route in routes {
        let m = &route.matcher;
        if let Some(prefix) = &m.path_prefix {
            let Some(p) = path else { continue };
            if !prefix_matches(prefix, p) {
                continue;
            }
            if route.action == RouteAction::Bypass && !plain {
                continue;
            }
        }
        if let Some(want) = &m.authority {
            let got = authority.get_or_insert_with(|| req.header(":authority"));
            if !authority_matches(want, got.as_deref()) {
                continue;
            }
        }
        if !m.methods.is_empty() {
            let got = method.get_or_insert_with(|| req.header(":method"));
            if !got.as_ref().is_some_and(|g| m.methods.contains(g)) {
                continue;
            }
        }
        return route.action;
    }
    RouteAction::Exchange(0)
}

/// Authority comparison as Envoy selects virtual hosts: case-insensitive, nothing else dropped.
/// A request whose Host adds a port or a trailing dot reaches another virtual host, so it must
/// not meet a rule written for this one (a bypass would hand that host the caller's token); a
/// rule with a port matches that port only.
fn authority_matches(want: &str, got: Option<&str>) -> bool {
    got.is_some_and(|got| got.eq_ignore_ascii_case(want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteMatch;

    #[test]
    fn configured_prefixes_must_be_normal() {
        let rule = |p: &str| Route {
            matcher: RouteMatch {
                path_prefix: Some(p.into()),
                ..RouteMatch::default()
            },
            action: RouteAction::Bypass,
        };
        assert!(Routes::compile(&[rule("/healthz")]).is_ok());
        for bad in ["/a/../b", "/a/%2fb", "/a//b"] {
            let e = Routes::compile(&[rule("/ok"), rule(bad)]).unwrap_err();
            assert_eq!(e.key, "routes[1].match.path_prefix", "{bad}");
        }
    }

    #[test]
    fn a_path_whose_readings_pick_different_rules_is_ambiguous() {
        let rule = |p: &str, action| Route {
            matcher: RouteMatch {
                path_prefix: Some(p.into()),
                ..RouteMatch::default()
            },
            action,
        };
        let routes = Routes::compile(&[
            rule("/health", RouteAction::Bypass),
            rule("/admin", RouteAction::Exchange(1)),
            rule("/public", RouteAction::Exchange(2)),
        ])
        .unwrap();
        let select = |path: &str| routes.select(&[(":path", path)][..]);
        assert_eq!(select("/admin/x"), Ok(RouteAction::Exchange(1)));
        assert_eq!(select("/admin/x;v=1"), Ok(RouteAction::Exchange(1)));
        assert_eq!(select("/public/a%20b"), Ok(RouteAction::Exchange(2)));
        assert_eq!(select("/health"), Ok(RouteAction::Bypass));
        assert_eq!(
            select("/health;/x"),
            Ok(RouteAction::Exchange(0)),
            "never a bypass"
        );
        for path in [
            "/admin;x/users",
            "/admin%2Fusers",
            "/public/..%2Fadmin",
            "/health/..;/admin",
            "/x%2f..%2fadmin",
        ] {
            assert_eq!(select(path), Err(Ambiguous), "{path}");
        }
    }

    #[test]
    fn authorities_compare_as_envoy_picks_virtual_hosts() {
        assert!(authority_matches("api.example", Some("API.Example")));
        assert!(authority_matches(
            "api.example:8443",
            Some("api.example:8443")
        ));
        for other in [
            "api.example:8443",
            "api.example.",
            "Api.Example.:1",
            " api.example",
            "api.example.evil",
        ] {
            assert!(!authority_matches("api.example", Some(other)), "{other}");
        }
        assert!(!authority_matches(
            "api.example:8443",
            Some("api.example:9443")
        ));
        assert!(!authority_matches("api.example:8443", Some("api.example")));
        assert!(!authority_matches("api.example", None));
    }
}
