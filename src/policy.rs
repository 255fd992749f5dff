//! The authorizer's reading of verified claims: whether they meet each access policy
//! (`require`) and what they tell the upstream (`output.claims_to_headers`). A token is judged
//! once per verification into [`Facts`], so that a request answered from the cache reads a bit
//! and a few strings, never the JWT again.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{ClaimHeader, ClaimRule, Config, Policy, Requirement};
use crate::host::{Host, LogLevel};

/// The claims of a token, as a JSON object.
pub type Claims = Map<String, Value>;

/// What one verified token's claims allow and tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Bit `i`: policy `i` holds.
    holds: u64,
    /// Policies that hold only while the user's authentication is recent enough (`max_age_s`):
    /// each with the last second it holds (`auth_time` + the most lenient `max_age_s`).
    timed: Option<Arc<[(u8, u64)]>>,
    /// The claim headers' values, in the configuration's order (`None`: not written).
    values: Option<Arc<[Option<Box<str>>]>>,
}

impl Facts {
    /// Whether policy `policy` holds at `now_s` (seconds).
    fn allows(&self, policy: usize, now_s: u64) -> bool {
        let bit = policy < 64 && self.holds & (1 << policy) != 0;
        bit || (self.timed.iter().flat_map(|t| t.iter()))
            .any(|(p, last)| usize::from(*p) == policy && now_s <= *last)
    }

    /// The value of claim header `i`, if the token gives one that may be written.
    pub fn header_value(&self, i: usize) -> Option<&str> {
        self.values.as_ref()?.get(i)?.as_deref()
    }

    /// About the bytes the claim headers' values hold.
    pub fn bytes(&self) -> usize {
        let timed = self.timed.as_ref().map_or(0, |t| t.len() * 16);
        timed
            + self.values.as_ref().map_or(0, |v| {
                v.iter()
                    .map(|s| {
                        s.as_ref().map_or(0, |s| s.len()) + std::mem::size_of::<Option<Box<str>>>()
                    })
                    .sum()
            })
    }
}

/// About the bytes a set of claims holds in memory (its JSON text's length, and a little per
/// value): what keeping it costs, as a memory bound counts it.
pub fn claims_bytes(claims: &Claims) -> usize {
    fn value(v: &Value) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        SLOT + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| SLOT + k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    claims.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// The policies and claim headers of one configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    policies: Vec<Policy>,
    headers: Vec<ClaimHeader>,
}

impl Rules {
    /// The rules of `config`.
    pub fn new(config: &Config) -> Self {
        Rules {
            policies: config.policies.clone(),
            headers: config.output.claims_to_headers.clone(),
        }
    }

    /// Some policy or claim header reads claims: a verified token must be judged.
    pub fn reads_claims(&self) -> bool {
        !self.headers.is_empty() || self.policies.iter().any(|p| !p.is_empty())
    }

    /// Judges `claims` against every policy and reads the claim headers' values. `unwritable`
    /// hears the name of each claim whose value cannot go into a header as it is (see
    /// [`log_unwritable`]).
    pub fn facts(&self, claims: &Claims, unwritable: &mut dyn FnMut(&str)) -> Facts {
        let mut holds = 0u64;
        let mut timed = Vec::new();
        let auth_time = claims.get("auth_time").and_then(Value::as_u64);
        for (i, p) in self.policies.iter().enumerate().take(64) {
            let met = p
                .iter()
                .filter(|r| meets(claims, r) && acr_meets(claims, r));
            let mut last = None;
            for r in met {
                match r.max_age_s {
                    None => holds |= 1 << i,
                    Some(max) => last = last.max(auth_time.map(|t| t.saturating_add(max))),
                }
            }
            if p.is_empty() {
                holds |= 1 << i;
            } else if let Some(last) = last.filter(|_| holds & (1 << i) == 0) {
                timed.push((u8::try_from(i).unwrap_or(u8::MAX), last));
            }
        }
        let timed = (!timed.is_empty()).then(|| timed.into());
        let values = (!self.headers.is_empty()).then(|| {
            self.headers
                .iter()
                .map(|h| {
                    let v = header_text(lookup(claims, &h.claim)?);
                    if v.is_none() {
                        unwritable(&h.claim);
                    }
                    v
                })
                .collect()
        });
        Facts {
            holds,
            timed,
            values,
        }
    }

    /// Policy `policy` holds at `now_s` for a token with these facts (no policy always holds).
    pub fn permits(&self, policy: usize, facts: Option<&Facts>, now_s: u64) -> bool {
        match self.policies.get(policy) {
            None => true,
            Some(p) if p.is_empty() => true,
            Some(_) => facts.is_some_and(|f| f.allows(policy, now_s)),
        }
    }

    /// Whether some alternative of `policy` asks for `acr` or `max_age_s`.
    pub fn may_step_up(&self, policy: usize) -> bool {
        self.policies
            .get(policy)
            .is_some_and(|p| p.iter().any(Requirement::steps_up))
    }

    /// For claims that fail `policy`: the first alternative that fails only on the user's
    /// authentication (its `acr` or `max_age_s`; its scopes and claims hold), as RFC 9470's
    /// challenge names it: `acr_values` and `max_age`, each when the alternative asks for it.
    pub fn step_up(&self, policy: usize, claims: &Claims) -> Option<StepUp> {
        let r = self
            .policies
            .get(policy)?
            .iter()
            .find(|r| r.steps_up() && meets(claims, r))?;
        Some(StepUp {
            acr_values: (!r.acr.is_empty()).then(|| r.acr.join(" ")),
            max_age: r.max_age_s,
        })
    }

    /// The `scope` a refusal by `policy` names: the first alternative's scopes, if it lists any.
    pub fn challenge_scope(&self, policy: usize) -> Option<String> {
        let first = self.policies.get(policy)?.first()?;
        (!first.scopes.is_empty()).then(|| first.scopes.join(" "))
    }

    /// Why `claims` fail `policy`, naming scopes and claims, never a claim's value.
    pub fn reason(&self, policy: usize, claims: &Claims) -> String {
        let Some(p) = self.policies.get(policy) else {
            return String::new();
        };
        let mut parts = Vec::with_capacity(p.len());
        for (i, r) in p.iter().enumerate() {
            let missing = r.scopes.iter().find(|s| !has_scope(claims, s));
            let failed = r.claims.iter().find(|c| !claim_meets(claims, c));
            let why = match (missing, failed) {
                (Some(s), _) => format!("scope {s} missing"),
                (None, Some(c)) if lookup(claims, &c.name).is_none() => {
                    format!("claim {} missing", c.name)
                }
                (None, Some(c)) => format!("claim {} has no accepted value", c.name),
                (None, None) if !acr_meets(claims, r) => "acr not accepted".to_string(),
                (None, None) if r.max_age_s.is_some() => {
                    "authentication too old or without auth_time".to_string()
                }
                (None, None) => "holds".to_string(),
            };
            parts.push(format!("[{i}] {why}"));
        }
        format!("policy not met: {}", parts.join("; "))
    }

    /// The claim headers' names, in order.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.iter().map(|h| h.header.as_str())
    }
}

/// What a step-up challenge asks for (RFC 9470 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// `acr_values`: the accepted `acr` values, space-separated.
    pub acr_values: Option<String>,
    /// `max_age`: seconds since the user's authentication.
    pub max_age: Option<u64>,
}

/// The token's `acr` is one `r` accepts (any, when it names none).
fn acr_meets(claims: &Claims, r: &Requirement) -> bool {
    r.acr.is_empty()
        || claims
            .get("acr")
            .and_then(Value::as_str)
            .is_some_and(|a| r.acr.iter().any(|w| w == a))
}

/// Its scopes and claims hold (the user's authentication is judged apart: [`acr_meets`] and
/// `max_age_s`).
fn meets(claims: &Claims, r: &Requirement) -> bool {
    r.scopes.iter().all(|s| has_scope(claims, s)) && r.claims.iter().all(|c| claim_meets(claims, c))
}

/// `scope` is granted: in `scope` or `scp`, each a space-separated string or a list.
fn has_scope(claims: &Claims, scope: &str) -> bool {
    ["scope", "scp"].iter().any(|name| match claims.get(*name) {
        Some(Value::String(s)) => s.split(' ').any(|t| t == scope),
        Some(Value::Array(a)) => a.iter().any(|t| t.as_str() == Some(scope)),
        _ => false,
    })
}

/// The claim's value, or one element of it when it is a list, is one of the accepted values.
fn claim_meets(claims: &Claims, rule: &ClaimRule) -> bool {
    let accepted = |v: &Value| match v {
        Value::String(s) => rule.values.iter().any(|a| a == s),
        Value::Bool(_) | Value::Number(_) => {
            let text = v.to_string();
            rule.values.contains(&text)
        }
        _ => false,
    };
    match lookup(claims, &rule.name) {
        Some(Value::Array(a)) => a.iter().any(accepted),
        Some(v) => accepted(v),
        None => false,
    }
}

/// A claim by name: a top-level claim of exactly that name, else a dotted path into objects.
fn lookup<'c>(claims: &'c Claims, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v).filter(|v| !v.is_null());
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v).filter(|v| !v.is_null())
}

/// A claim as a header value: a string as it is, a list joined with `,`, anything else as
/// JSON. `None` when an upstream would read the text as another value: a control character
/// other than tab (CR, LF, NUL), white space at either end of the value or of a list element
/// (every HTTP recipient trims it), or a list element that is empty or holds a comma (it would
/// read as two elements, or none).
fn header_text(v: &Value) -> Option<Box<str>> {
    let piece = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let padded = |t: &str| t.starts_with([' ', '\t']) || t.ends_with([' ', '\t']);
    let text = match v {
        Value::Array(a) => {
            let pieces: Vec<String> = a.iter().map(piece).collect();
            let ambiguous = |p: &String| p.is_empty() || p.contains(',') || padded(p);
            if pieces.iter().any(ambiguous) {
                return None;
            }
            pieces.join(",")
        }
        other => piece(other),
    };
    let writable = !padded(&text) && !text.chars().any(|c| c.is_control() && c != '\t');
    writable.then(|| text.into_boxed_str())
}

/// Logs that claim `name` was not written to its header (its name only, never its value).
pub fn log_unwritable<H: Host>(host: &H, name: &str) {
    let msg = format!(
        "claim {name} not written to its header: an upstream would read its value as another \
         (a control character, white space at an end, or a list element that is empty or holds \
         a comma)"
    );
    host.log(LogLevel::Info, &msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(policies: Value, headers: Value) -> Rules {
        let parse = |v: &Value| -> Policy {
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| Requirement {
                    scopes: r["scopes"]
                        .as_array()
                        .map(|a| a.iter().map(|s| s.as_str().unwrap().into()).collect())
                        .unwrap_or_default(),
                    claims: r["claims"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| ClaimRule {
                                    name: k.clone(),
                                    values: v
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .map(|s| s.as_str().unwrap().into())
                                        .collect(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    acr: r["acr"]
                        .as_array()
                        .map(|a| a.iter().map(|s| s.as_str().unwrap().into()).collect())
                        .unwrap_or_default(),
                    max_age_s: r["max_age_s"].as_u64(),
                })
                .collect()
        };
        Rules {
            policies: policies.as_array().unwrap().iter().map(parse).collect(),
            headers: headers
                .as_array()
                .unwrap()
                .iter()
                .map(|h| ClaimHeader {
                    claim: h[0].as_str().unwrap().into(),
                    header: h[1].as_str().unwrap().into(),
                    aliases: Vec::new(),
                })
                .collect(),
        }
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    fn holds(r: &Rules, policy: usize, c: Value) -> bool {
        let f = r.facts(&claims(c), &mut |_| {});
        r.permits(policy, Some(&f), NOW)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn acr_and_max_age_judge_the_users_authentication_at_the_moment_of_the_request() {
        let r = rules(
            json!([[{"scopes": ["pay"], "acr": ["phr", "phrh"], "max_age_s": 300}, {"scopes": ["admin"]}]]),
            json!([]),
        );
        let c = |acr: &str, auth_time: u64| {
            claims(json!({"scope": "pay", "acr": acr, "auth_time": auth_time}))
        };
        let f = r.facts(&c("phr", NOW - 100), &mut |_| {});
        assert!(r.permits(0, Some(&f), NOW));
        assert!(
            r.permits(0, Some(&f), NOW + 200),
            "the last second it holds"
        );
        assert!(
            !r.permits(0, Some(&f), NOW + 201),
            "the same facts, later: too old"
        );
        let step = StepUp {
            acr_values: Some("phr phrh".into()),
            max_age: Some(300),
        };
        assert_eq!(r.step_up(0, &c("phr", NOW - 400)), Some(step.clone()));
        let weak = r.facts(&c("pwd", NOW), &mut |_| {});
        assert!(!r.permits(0, Some(&weak), NOW));
        assert_eq!(r.step_up(0, &c("pwd", NOW)), Some(step));
        // Without auth_time a max_age never holds; without the scope it is no step-up.
        let none = claims(json!({"scope": "pay", "acr": "phr"}));
        assert!(!r.permits(0, Some(&r.facts(&none, &mut |_| {})), NOW));
        assert_eq!(
            r.step_up(0, &claims(json!({"scope": "read", "acr": "pwd"}))),
            None
        );
        // Another alternative that holds outright needs no time.
        let admin = r.facts(&claims(json!({"scope": "admin"})), &mut |_| {});
        assert!(r.permits(0, Some(&admin), u64::MAX));
        assert!(r.may_step_up(0) && !r.may_step_up(1));
        assert!(r.reason(0, &c("pwd", NOW)).contains("acr not accepted"));
    }

    #[test]
    fn scopes_come_from_scope_or_scp_as_a_string_or_a_list() {
        let r = rules(
            json!([[{ "scopes": ["orders:read", "orders:write"] }]]),
            json!([]),
        );
        assert!(holds(
            &r,
            0,
            json!({ "scope": "a orders:write orders:read" })
        ));
        assert!(holds(
            &r,
            0,
            json!({ "scp": ["orders:read", "orders:write"] })
        ));
        assert!(holds(&r, 0, json!({ "scp": "orders:read orders:write" })));
        assert!(
            !holds(&r, 0, json!({ "scope": "orders:read" })),
            "one missing"
        );
        assert!(!holds(
            &r,
            0,
            json!({ "scope": "orders:read,orders:write" })
        ));
        assert!(!holds(
            &r,
            0,
            json!({ "scope": "orders:readx orders:write" })
        ));
        assert!(!holds(&r, 0, json!({})));
        assert!(!holds(&r, 0, json!({ "scope": 5 })));
    }

    #[test]
    fn claims_match_exactly_any_element_and_through_dotted_names() {
        let r = rules(
            json!([[{ "claims": { "tenant": ["acme", "globex"], "realm_access.roles": ["admin"] } }]]),
            json!([]),
        );
        let ok = json!({ "tenant": "acme", "realm_access": { "roles": ["user", "admin"] } });
        assert!(holds(&r, 0, ok));
        let wrong = json!({ "tenant": "Acme", "realm_access": { "roles": ["admin"] } });
        assert!(!holds(&r, 0, wrong), "exact, case included");
        assert!(
            !holds(&r, 0, json!({ "tenant": "acme" })),
            "a missing claim fails"
        );
        let flat = json!({ "tenant": ["x", "globex"], "realm_access.roles": "admin" });
        assert!(
            holds(&r, 0, flat),
            "a top-level name with a dot is taken first"
        );
        let nested_list = json!({ "tenant": [["acme"]], "realm_access": { "roles": "admin" } });
        assert!(!holds(&r, 0, nested_list), "only one level of list");
        let null = json!({ "tenant": null, "realm_access": { "roles": "admin" } });
        assert!(!holds(&r, 0, null));
    }

    #[test]
    fn numbers_and_booleans_compare_as_json_text() {
        let r = rules(
            json!([[{ "claims": { "email_verified": ["true"], "level": ["3"] } }]]),
            json!([]),
        );
        assert!(holds(&r, 0, json!({ "email_verified": true, "level": 3 })));
        assert!(!holds(
            &r,
            0,
            json!({ "email_verified": "yes", "level": 3 })
        ));
        assert!(!holds(
            &r,
            0,
            json!({ "email_verified": true, "level": { "v": 3 } })
        ));
    }

    #[test]
    fn any_alternative_may_hold_and_no_policy_always_holds() {
        let r = rules(
            json!([
                [{ "scopes": ["a"], "claims": { "t": ["x"] } }, { "claims": { "groups": ["admins"] } }],
                [],
            ]),
            json!([]),
        );
        assert!(holds(&r, 0, json!({ "scope": "a", "t": "x" })));
        assert!(holds(&r, 0, json!({ "groups": ["admins"] })));
        assert!(
            !holds(&r, 0, json!({ "scope": "a", "t": "y" })),
            "both of one must hold"
        );
        assert!(holds(&r, 1, json!({})));
        assert!(r.permits(1, None, NOW) && r.permits(9, None, NOW));
        assert!(!r.permits(0, None, NOW), "a policy needs facts");
        assert_eq!(r.challenge_scope(0).as_deref(), Some("a"));
        assert_eq!(r.challenge_scope(1), None);
    }

    #[test]
    fn the_reason_names_what_failed_never_a_value() {
        let r = rules(
            json!([[{ "scopes": ["orders:read"] }, { "claims": { "tenant": ["acme"] } }, { "claims": { "g": ["x"] } }]]),
            json!([]),
        );
        let why = r.reason(0, &claims(json!({ "tenant": "secret-corp" })));
        assert_eq!(
            why,
            "policy not met: [0] scope orders:read missing; [1] claim tenant has no accepted value; [2] claim g missing"
        );
        assert!(!why.contains("secret-corp"));
    }

    #[test]
    fn header_values_are_text_lists_joined_and_never_a_line_break() {
        let r = rules(
            json!([[]]),
            json!([
                ["sub", "x-user"],
                ["groups", "x-groups"],
                ["n", "x-n"],
                ["ok", "x-ok"],
                ["evil", "x-evil"],
                ["gone", "x-gone"],
                ["a.b", "x-ab"],
                ["nul", "x-nul"],
                ["tab", "x-tab"]
            ]),
        );
        let mut bad = Vec::new();
        let f = r.facts(
            &claims(json!({
                "sub": "alice", "groups": ["a", "b", 3], "n": 1.5, "ok": false,
                "evil": "x\r\nset-cookie: y", "a": { "b": "deep" }, "nul": ["a\u{0}"], "tab": "a\tb"
            })),
            &mut |name| bad.push(name.to_string()),
        );
        let got: Vec<_> = (0..9).map(|i| f.header_value(i)).collect();
        assert_eq!(
            got,
            [
                Some("alice"),
                Some("a,b,3"),
                Some("1.5"),
                Some("false"),
                None,
                None,
                Some("deep"),
                None,
                Some("a\tb")
            ]
        );
        assert_eq!(bad, ["evil", "nul"], "named, the absent claim not");
        assert_eq!(r.header_names().collect::<Vec<_>>()[1], "x-groups");
    }

    #[test]
    fn rules_without_policy_or_headers_read_no_claims() {
        assert!(!rules(json!([[]]), json!([])).reads_claims());
        assert!(rules(json!([[], [{ "scopes": ["a"] }]]), json!([])).reads_claims());
        assert!(rules(json!([[]]), json!([["sub", "x"]])).reads_claims());
        let f = rules(json!([[]]), json!([])).facts(&claims(json!({})), &mut |_| {});
        assert_eq!(f.header_value(0), None);
    }
}
