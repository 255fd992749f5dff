//! The authorizer: `require` policies (default and per route), claims into headers, and both
//! on every path a request can take (memo, shared cache, STS answer, forwarded issuer).

use super::issuers::{ask, keys, token_with, unsigned, ISS};
use super::*;
use serde_json::json;

/// An engine trusting the inline test issuer, with `extra` at the top level.
fn trusting(extra: serde_json::Value) -> Engine {
    let mut config = json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() }]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    engine(config)
}

fn at(e: &mut Engine, h: &FakeHost, ctx: u32, path: &str, t: &str) -> Verdict {
    let auth = bearer(t);
    e.on_request(
        h,
        ctx,
        &[(":path", path), ("authorization", auth.as_str())][..],
    )
}

/// The header is removed by the verdict and not set again after.
fn removed(v: &Verdict, name: &str) -> bool {
    let Verdict::Continue(ops) = v else {
        return false;
    };
    let last = ops.iter().rev().find(|op| match op {
        HeaderOp::Set(n, _) | HeaderOp::Remove(n) => n == name,
        HeaderOp::State(..) => false,
    });
    matches!(last, Some(HeaderOp::Remove(_)))
}

#[test]
fn a_missing_scope_is_403_naming_it_without_an_sts_call() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({ "require": [{ "scopes": ["orders:read"] }] }));
    let weak = token_with(json!({ "scope": "orders:write", "tenant": "secret-corp" }));
    let v = ask(&mut e, &h, 1, &weak);
    assert_eq!(status(&v), 403);
    assert_eq!(
        challenge(&v),
        "Bearer realm=\"token-exchange\", error=\"insufficient_scope\", scope=\"orders:read\""
    );
    assert!(h.calls.borrow().is_empty(), "no STS call");
    assert_eq!(h.metric_value(Metric::PolicyDenied), 1);
    assert_eq!(h.metric_value(Metric::Rejected), 1);
    let logs = h.logs.borrow();
    assert!(logs
        .iter()
        .any(|(_, l)| l.contains("[0] scope orders:read missing")));
    assert!(
        !logs.iter().any(|(_, l)| l.contains("secret-corp")),
        "never a value"
    );
    drop(logs);
    // Asked again, the remembered verification refuses it again: still no call.
    assert_eq!(status(&ask(&mut e, &h, 2, &weak)), 403);
    assert_eq!(h.metric_value(Metric::PolicyDenied), 2);
    // The scope is there: exchanged, then served from the memo.
    let strong = token_with(json!({ "scope": "orders:read" }));
    let v = exchange(&mut e, &h, 3, &strong, &ok("minted", 300));
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
    let v = ask(&mut e, &h, 4, &strong);
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
    assert_eq!(h.calls.borrow().len(), 1);
    assert_eq!(h.metric_value(Metric::PolicyDenied), 2);
}

#[test]
fn a_routes_policy_replaces_the_default_and_an_empty_one_means_none() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "require": [{ "scopes": ["api"] }],
        "routes": [
            { "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "groups": ["admins"] } }] },
            { "match": { "path_prefix": "/public" }, "require": [] },
            { "match": { "path_prefix": "/orders" }, "exchange": { "audience": "orders" } }
        ]
    }));
    let api_user = token_with(json!({ "scope": "api", "groups": ["users"] }));
    let admin = token_with(json!({ "groups": ["users", "admins"] }));
    let nobody = token_with(json!({}));
    // Default policy on unmatched paths and on a route that only changes the exchange.
    assert_eq!(at(&mut e, &h, 1, "/x", &api_user), Verdict::Pause);
    assert_eq!(status(&at(&mut e, &h, 2, "/x", &admin)), 403);
    assert_eq!(at(&mut e, &h, 3, "/orders/1", &api_user), Verdict::Pause);
    assert_eq!(status(&at(&mut e, &h, 4, "/orders/1", &nobody)), 403);
    // The route's own policy replaces the default: the scope no longer counts.
    assert_eq!(status(&at(&mut e, &h, 5, "/admin", &api_user)), 403);
    assert_eq!(at(&mut e, &h, 6, "/admin/users", &admin), Verdict::Pause);
    let v = at(&mut e, &h, 7, "/admin", &api_user);
    assert!(
        !challenge(&v).contains("scope="),
        "its first alternative lists no scope"
    );
    // No policy at all.
    assert_eq!(at(&mut e, &h, 8, "/public", &nobody), Verdict::Pause);
    assert_eq!(h.metric_value(Metric::PolicyDenied), 4);
    assert_eq!(h.calls.borrow().len(), 4);
}

#[test]
fn alternatives_hold_one_at_a_time_and_every_condition_of_one() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({ "require": [
        { "scopes": ["orders:read"], "claims": { "tenant": ["acme", "globex"] } },
        { "claims": { "realm_access.roles": ["admin"] } }
    ] }));
    let cases = [
        (json!({ "scope": "orders:read", "tenant": "globex" }), true),
        (
            json!({ "scp": ["orders:read"], "tenant": ["x", "acme"] }),
            true,
        ),
        (
            json!({ "realm_access": { "roles": ["user", "admin"] } }),
            true,
        ),
        (
            json!({ "scope": "orders:read", "tenant": "initech" }),
            false,
        ),
        (json!({ "tenant": "acme" }), false),
        (json!({ "realm_access": { "roles": "user" } }), false),
        (json!({ "realm_access": "admin" }), false),
    ];
    for (i, (claims, allowed)) in cases.into_iter().enumerate() {
        let v = ask(&mut e, &h, i as u32 + 1, &token_with(claims.clone()));
        let got = v == Verdict::Pause;
        assert_eq!(got, allowed, "{claims}");
        if !allowed {
            assert!(challenge(&v).contains("scope=\"orders:read\""));
        }
    }
}

#[test]
fn a_policy_is_judged_on_verified_claims_only() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({ "require": [{ "scopes": ["api"] }] }));
    // The right claims, but no valid signature: refused as a token, never judged.
    let forged =
        unsigned(json!({ "iss": ISS, "sub": "m", "scope": "api", "exp": NOW / 1000 + 60 }));
    assert_eq!(status(&ask(&mut e, &h, 1, &forged)), 401);
    assert_eq!(h.metric_value(Metric::PolicyDenied), 0);
}

#[test]
fn claims_go_into_headers_and_client_copies_never_pass() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "output": { "claims_to_headers": [
            { "claim": "sub", "header": "x-user" },
            { "claim": "groups", "header": "X-Groups" },
            { "claim": "tenant", "header": "x-tenant" },
            { "claim": "org.id", "header": "x-org" },
            { "claim": "note", "header": "x-note" }
        ] },
        "routes": [{ "match": { "path_prefix": "/health" }, "bypass": true }]
    }));
    let t = token_with(
        json!({ "groups": ["a", "b"], "org": { "id": 42 }, "note": "hi\r\nx-user: root" }),
    );
    let auth = bearer(&t);
    let req: &[(&str, &str)] = &[
        (":path", "/api"),
        ("authorization", auth.as_str()),
        ("x-user", "root"),
        ("x-tenant", "spoofed"),
    ];
    assert_eq!(e.on_request(&h, 1, req), Verdict::Pause);
    let first = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 300));
    let from_memo = e.on_request(&h, 2, req);
    for v in [&first[0].1, &from_memo] {
        assert_eq!(
            set_value(v, "x-user"),
            Some("alice".into()),
            "the verified sub"
        );
        assert_eq!(set_value(v, "x-groups"), Some("a,b".into()));
        assert_eq!(set_value(v, "x-org"), Some("42".into()));
        assert!(
            removed(v, "x-tenant"),
            "an absent claim removes the client's copy"
        );
        assert!(removed(v, "x-note"), "a value with CR/LF is not written");
    }
    let logs = h.logs.borrow();
    let named: Vec<_> = logs
        .iter()
        .filter(|(_, l)| l.contains("claim note not written"))
        .collect();
    assert_eq!(named.len(), 1, "named once, at verification");
    assert!(
        !logs.iter().any(|(_, l)| l.contains("root")),
        "never the value"
    );
    drop(logs);
    // Requests that go on without verified claims lose every client copy too.
    let bypass = e.on_request(&h, 3, &[(":path", "/health"), ("x-user", "root")][..]);
    assert!(removed(&bypass, "x-user") && removed(&bypass, "x-groups"));
}

#[test]
fn claim_headers_come_with_a_shared_cache_hit_and_a_forwarded_token() {
    let h = FakeHost::at(NOW);
    let sts_iss = "https://sts.example";
    let config = json!({
        "trusted_issuers": [
            { "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() },
            { "issuer": sts_iss, "algorithms": ["RS256"], "jwks": keys().jwks(), "action": "forward" }
        ],
        "require": [{ "scopes": ["api"] }],
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] }
    });
    let mut worker1 = engine(config.clone());
    let mut worker2 = engine(config);
    let t = token_with(json!({ "scope": "api" }));
    exchange(&mut worker1, &h, 1, &t, &ok("minted", 300));
    // The other worker verifies for itself, then finds the entry in shared data.
    let v = ask(&mut worker2, &h, 2, &t);
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
    assert_eq!(set_value(&v, "x-user"), Some("alice".into()));
    assert_eq!(h.calls.borrow().len(), 1);
    // A forwarded issuer's token is held to the policy and gets the headers too.
    let ours = token_with(json!({ "iss": sts_iss, "sub": "svc", "scope": "api" }));
    let v = ask(&mut worker2, &h, 3, &ours);
    assert_eq!(set_value(&v, "authorization"), Some(bearer(&ours)));
    assert_eq!(set_value(&v, "x-user"), Some("svc".into()));
    let unscoped = token_with(json!({ "iss": sts_iss }));
    assert_eq!(status(&ask(&mut worker2, &h, 4, &unscoped)), 403);
    assert_eq!(h.metric_value(Metric::Forwarded), 1);
    assert_eq!(h.calls.borrow().len(), 1);
}

#[test]
fn a_missing_token_allowed_through_carries_no_client_claim_header() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "on_missing_token": "allow",
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] }
    }));
    let v = e.on_request(&h, 1, &[(":path", "/"), ("x-user", "root")][..]);
    assert!(removed(&v, "x-user"));
}

#[test]
fn a_route_with_a_policy_never_passes_a_request_without_a_token() {
    // Round 5, D3: `on_missing_token: allow` is one global setting; the admins' route must
    // still refuse a request with no token at all, while the public route lets it through.
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "on_missing_token": "allow",
        "routes": [
            { "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "groups": ["admins"] } }] },
            { "match": { "path_prefix": "/public" }, "require": [] }
        ]
    }));
    let bare = |e: &mut Engine, ctx: u32, path: &str| {
        e.on_request(&h, ctx, &[(":path", path), ("x-user", "spoofed")][..])
    };
    let v = bare(&mut e, 1, "/admin/users");
    assert_eq!(status(&v), 401);
    assert_eq!(
        challenge(&v),
        "Bearer realm=\"token-exchange\"",
        "a bare challenge"
    );
    let v = bare(&mut e, 2, "/admin;x/users");
    assert!(matches!(status(&v), 400 | 401), "nor by another spelling");
    let v = bare(&mut e, 3, "/public/page");
    assert!(matches!(v, Verdict::Continue(_)), "{v:?}");
    assert!(h.calls.borrow().is_empty());
    // A default policy closes every route that does not open itself.
    let mut e = trusting(json!({
        "on_missing_token": "allow",
        "require": [{ "scopes": ["read"] }],
        "routes": [{ "match": { "path_prefix": "/public" }, "require": [] }]
    }));
    assert_eq!(status(&bare(&mut e, 4, "/orders")), 401);
    assert!(matches!(bare(&mut e, 5, "/public"), Verdict::Continue(_)));
}

#[test]
fn every_spelling_an_upstream_reads_as_a_claim_header_is_removed() {
    // Round 5, D4: CGI-style upstreams read `x_tenant` as `x-tenant`; a client copy under
    // either spelling never reaches them, whatever path the request takes.
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "on_missing_token": "allow",
        "routes": [{ "match": { "path_prefix": "/health" }, "bypass": true }],
        "output": { "claims_to_headers": [{ "claim": "tenant", "header": "x-tenant" },
                                          { "claim": "sub", "header": "x-user-id_no" }] }
    }));
    let spellings = [
        "x-tenant",
        "x_tenant",
        "x-user-id_no",
        "x_user_id_no",
        "x-user-id-no",
        "x_user-id_no",
        "x_user_id-no",
    ];
    let alice = token_with(json!({ "tenant": "acme" }));
    let exchanged = exchange(&mut e, &h, 1, &alice, &ok("m", 600));
    let memo = ask(&mut e, &h, 2, &alice);
    let bypassed = at(&mut e, &h, 3, "/health", &alice);
    let no_token = e.on_request(&h, 4, &[(":path", "/x")][..]);
    for v in [&exchanged, &memo, &bypassed, &no_token] {
        let Verdict::Continue(ops) = v else {
            panic!("{v:?}")
        };
        for s in spellings {
            let touched = ops.iter().any(|op| match op {
                HeaderOp::Set(n, _) | HeaderOp::Remove(n) => n == s,
                HeaderOp::State(..) => false,
            });
            assert!(touched, "{s} left as the client sent it: {ops:?}");
        }
    }
    assert_eq!(set_value(&exchanged, "x-tenant").as_deref(), Some("acme"));
    assert!(removed(&exchanged, "x_tenant"));
    assert_eq!(set_value(&memo, "x-user-id_no").as_deref(), Some("alice"));
}

#[test]
fn a_claim_value_an_upstream_would_read_as_another_is_not_written() {
    // Round 5, D5: `["users,admins"]` would read as two groups, `"admin\t"` as `admin`.
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "output": { "claims_to_headers": [{ "claim": "groups", "header": "x-groups" }] }
    }));
    let cases = [
        (json!(["users,admins"]), None),
        (json!("admin\t"), None),
        (json!(" admin"), None),
        (json!(["users", " admins"]), None),
        (json!(["users", ""]), None),
        (json!([{ "a": 1, "b": 2 }]), None),
        (json!(["users", "admins"]), Some("users,admins")),
        (json!("a b\tc"), Some("a b\tc")),
        (json!("users,admins"), Some("users,admins")),
    ];
    for (i, (groups, written)) in cases.into_iter().enumerate() {
        let t = token_with(json!({ "groups": groups, "jti": i }));
        let v = exchange(&mut e, &h, 10 + i as u32, &t, &ok("m", 600));
        assert_eq!(set_value(&v, "x-groups").as_deref(), written, "case {i}");
        if written.is_none() {
            assert!(removed(&v, "x-groups"), "case {i}");
        }
    }
    let logs = h.logs.borrow();
    assert!(logs
        .iter()
        .any(|(_, l)| l.contains("claim groups not written")));
    assert!(
        !logs.iter().any(|(_, l)| l.contains("admins")),
        "never a value"
    );
}

#[test]
fn a_path_spelling_never_escapes_a_stricter_routes_policy() {
    // Round 5, D9: servlet containers serve `;` parameters and many servers decode `%2F`, so
    // these reach `/admin/users` upstream: they meet the admins' policy or are refused.
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "routes": [
            { "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "groups": ["admins"] } }] },
            { "match": { "path_prefix": "/public" }, "require": [] }
        ]
    }));
    let user = token_with(json!({ "groups": ["users"] }));
    for (i, path) in [
        "/admin;x/users",
        "/admin;/users",
        "/admin%2fusers",
        "/admin%2Fusers",
        "/admin%252Fusers",
        "/admin%5cusers",
        "/admin\\users",
        "/public/..%2Fadmin/users",
        "/public;/../admin/users",
        "/public/..;/admin/users",
        "//public/..//admin/users",
        "/ADMIN/../admin;v=1/users",
    ]
    .iter()
    .enumerate()
    {
        let v = at(&mut e, &h, i as u32 + 1, path, &user);
        assert!(matches!(status(&v), 400 | 403), "{path}: {v:?}");
    }
    assert!(h.calls.borrow().is_empty(), "no spelling reached the STS");
    // Spellings every reading puts under one rule still serve.
    let admin = token_with(json!({ "groups": ["admins"] }));
    assert_eq!(
        at(&mut e, &h, 50, "/admin/users;jsessionid=1", &admin),
        Verdict::Pause
    );
    assert_eq!(status(&at(&mut e, &h, 51, "/admin/a%2Fb", &user)), 403);
    assert_eq!(at(&mut e, &h, 52, "/public/a%20b", &user), Verdict::Pause);
    let v = at(&mut e, &h, 53, "/admin;x/users", &admin);
    assert_eq!(
        status(&v),
        400,
        "the readings disagree: refused for everyone"
    );
    assert_eq!(h.metric_value(Metric::Rejected), 14);
}
