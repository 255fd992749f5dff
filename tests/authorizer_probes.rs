//! End to end, the authorizer's promises probed as an attacker would (round 5): trust that stays
//! with the issuer and route that gave it, a policy no path spelling escapes, a route that asks
//! for something never passing a request without a token, claim headers no client spelling
//! smuggles and no value that reads as another, one token's bad answer that leaves
//! introspection up for everyone else, discovery that does not reset the key set's backoff, and
//! refusals at load. The release `.wasm` in a real Envoy (`TEST_WASM` loads another build).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    mint, raw_request, start_echo, status_of, Envoy, EnvoySetup, Signer, StsReply, TestSts,
};

const ISS: &str = "https://idp.test";

/// The filter's configuration: the test STS as `sts`, and `extra` at the top level.
fn config(extra: Value) -> Value {
    let c = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token",
                 "timeout_ms": 1000, "client_id": "edge", "client_secret": "sts-secret" },
        "exchange": { "audience": ["api"] }
    });
    support::merged(c, extra)
}

fn start(sts: &TestSts, config: Value, concurrency: u32, clusters: &[(&str, u16)]) -> Envoy {
    support::start_filter(sts.port, config, concurrency, clusters, &[])
}

/// A GET of `path` as written (no client library rewrites it) with these header lines; the
/// whole answer.
fn raw_get(envoy: &Envoy, path: &str, headers: &[String]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw_request(envoy, req.as_bytes())
}

/// A trusted issuer with inline keys of `signer`.
fn trusted(signer: &Signer) -> Value {
    json!([{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }])
}

/// A token of the trusted issuer for `sub` with these extra claims.
fn token(signer: &Signer, sub: &str, extra: Value) -> String {
    let mut claims = json!({ "iss": ISS, "sub": sub, "exp": support::now_s() + 600 });
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    signer.token(&claims, None)
}

/// An introspecting issuer at `cluster`.
fn introspecting(name: &str, cluster: &str) -> Value {
    json!({ "issuer": name, "introspection": { "cluster": cluster, "authority": "idp.test",
            "path": "/introspect", "client_id": "edge", "client_secret": "pw", "cache_s": 60 } })
}

#[test]
fn opaque_trust_stays_with_the_issuer_and_the_routes_that_gave_it() {
    // D1: A's token, introspected and exchanged on A's route, is asked about at B (which says
    // inactive) and shown to nobody on a route that names no introspecting issuer.
    let sts = TestSts::start(0, mint);
    let a = TestSts::start(0, |_, _| {
        StsReply::json(
            200,
            json!({ "active": true, "iss": "https://a.test", "sub": "dora" }),
        )
    });
    let b = TestSts::start(0, |_, _| StsReply::json(200, json!({ "active": false })));
    let cfg = config(json!({
        "trusted_issuers": [introspecting("https://a.test", "a"), introspecting("https://b.test", "b")],
        "routes": [
            { "match": { "path_prefix": "/a" }, "introspect": "https://a.test" },
            { "match": { "path_prefix": "/b" }, "introspect": "https://b.test" }
        ]
    }));
    let envoy = start(&sts, cfg, 1, &[("a", a.port), ("b", b.port)]);
    let r = envoy.get_with_token("/a/orders", "opaque-of-a");
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..2 {
        let r = envoy.get_with_token("/b/orders", "opaque-of-a");
        assert_eq!(r.status, 401, "{}", r.body);
        let r = envoy.get_with_token("/elsewhere", "opaque-of-a");
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(b.count(), 1, "b was asked, and its answer remembered");
    assert_eq!((a.count(), sts.count()), (1, 1));
}

#[test]
fn a_route_that_asks_for_something_never_passes_a_request_without_a_token() {
    // D3: `on_missing_token: allow` with a public route beside an admins-only one.
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let cfg = config(json!({
        "trusted_issuers": trusted(&signer),
        "on_missing_token": "allow",
        "routes": [
            { "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "groups": ["admins"] } }] },
            { "match": { "path_prefix": "/public" }, "require": [] }
        ]
    }));
    let envoy = start(&sts, cfg, 1, &[]);
    let r = envoy.get("/admin/users", &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"token-exchange\"")
    );
    let r = envoy.get("/public/page", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/public/page");
    assert_eq!(sts.count(), 0);
}

#[test]
fn claim_headers_arrive_under_no_client_spelling_and_never_as_another_value() {
    // D4: Envoy passes `x_tenant` on, and CGI-style upstreams read it as `x-tenant`. D5: a
    // value an upstream would read as another is not written.
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let cfg = config(json!({
        "trusted_issuers": trusted(&signer),
        "output": { "claims_to_headers": [{ "claim": "tenant", "header": "x-tenant" },
                                          { "claim": "groups", "header": "x-groups" }] }
    }));
    let envoy = start(&sts, cfg, 1, &[]);
    let alice = token(&signer, "alice", json!({ "groups": ["users"] }));
    let spoofed = [
        format!("authorization: Bearer {alice}"),
        "x_tenant: evil-corp".to_string(),
        "X_Tenant: evil-corp".to_string(),
        "x-tenant: evil-corp".to_string(),
        "x_groups: admins".to_string(),
    ];
    for _ in 0..2 {
        let text = raw_get(&envoy, "/orders", &spoofed);
        assert_eq!(status_of(&text), 200, "{text}");
        assert!(
            !text.contains("evil-corp") && !text.contains("admins"),
            "{text}"
        );
        assert!(text.contains(r#""x-groups":"users""#), "{text}");
    }
    for (i, groups) in [
        json!(["users,admins"]),
        json!("admins\t"),
        json!([" admins", "x"]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = token(&signer, &format!("u{i}"), json!({ "groups": groups }));
        let r = envoy.get_with_token("/orders", &t);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.upstream_header("x-groups"), None, "{groups}: {}", r.body);
    }
}

#[test]
fn no_path_spelling_escapes_the_admins_policy() {
    // D9: servlet containers serve `;` parameters and many servers decode `%2F`: each of
    // these reaches `/admin/users` there, so it meets the admins' policy or is refused.
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let cfg = config(json!({
        "trusted_issuers": trusted(&signer),
        "routes": [{ "match": { "path_prefix": "/admin" },
                     "require": [{ "claims": { "groups": ["admins"] } }] }]
    }));
    let envoy = start(&sts, cfg, 1, &[]);
    let user = format!(
        "authorization: Bearer {}",
        token(&signer, "mallory", json!({ "groups": ["users"] }))
    );
    for path in [
        "/admin;x/users",
        "/admin;/users",
        "/admin%2fusers",
        "/admin%2Fusers",
        "/admin%252Fusers",
        "/admin%5Cusers",
        "/x/..%2Fadmin/users",
        "/x/..;/admin/users",
    ] {
        let text = raw_get(&envoy, path, std::slice::from_ref(&user));
        assert!(matches!(status_of(&text), 400 | 403), "{path}: {text}");
        assert!(!text.contains("minted-"), "{path}: {text}");
    }
    assert_eq!(sts.count(), 0, "no spelling reached the STS");
    let text = raw_get(&envoy, "/orders/a%20b", &[user]);
    assert_eq!(status_of(&text), 200, "{text}");
}

#[test]
fn one_tokens_unusable_answer_leaves_introspection_up_for_every_other_token() {
    // D7: an answer the filter cannot use about one token is that token's 502, not an outage.
    let sts = TestSts::start(0, mint);
    let idp = TestSts::start(0, |_, call| match call.field("token") {
        Some("poison-json") => StsReply::json(200, json!({ "active": "yes" })),
        Some("poison-status") => StsReply::error(400, "invalid_request"),
        _ => StsReply::json(
            200,
            json!({ "active": true, "iss": "https://p.test", "sub": "x" }),
        ),
    });
    let cfg = config(json!({ "trusted_issuers": [introspecting("https://p.test", "idp")] }));
    let envoy = start(&sts, cfg, 1, &[("idp", idp.port)]);
    for round in 0..3 {
        for poison in ["poison-json", "poison-status"] {
            let r = envoy.get_with_token("/", poison);
            assert_eq!(r.status, 502, "{poison}: {}", r.body);
        }
        let r = envoy.get_with_token("/", &format!("fine-{round}"));
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
    }
    assert_eq!(envoy.counter("introspection_errors"), 6);
}

#[test]
fn a_failing_key_set_backs_off_though_its_discovery_document_answers() {
    // D10: each failed key set is discovered again; the document's success must not reset the
    // backoff (9 key-set fetches in 9 s on two workers before; the doubling allows about 4).
    let idp = TestSts::start(0, |_, call| match call.path.as_str() {
        "/.well-known/openid-configuration" => StsReply::json(
            200,
            json!({ "issuer": ISS, "jwks_uri": "https://idp.test/keys" }),
        ),
        _ => StsReply::error(503, "down"),
    });
    let sts = TestSts::start(0, mint);
    let cfg = config(
        json!({ "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"],
        "discovery": { "cluster": "idp", "authority": "idp.test" } }] }),
    );
    let envoy = start(&sts, cfg, 2, &[("idp", idp.port)]);
    thread::sleep(Duration::from_secs(9));
    let key_sets = idp.calls().iter().filter(|c| c.path == "/keys").count();
    assert!(
        (2..=5).contains(&key_sets),
        "{key_sets} key-set fetches in 9 s"
    );
    drop(envoy);
}

#[test]
fn a_name_written_twice_or_a_misplaced_secret_stops_envoy_with_one_clear_line() {
    // D11: two conditions on one claim; D8: a secret written where a word belongs.
    let signer = Signer::new("k1");
    let twice = config(json!({ "trusted_issuers": trusted(&signer) })).to_string();
    let twice = format!(
        r#"{},"require":[{{"claims":{{"groups":["admins"],"groups":["finance"]}}}}]}}"#,
        &twice[..twice.len() - 1]
    );
    let log = Envoy::refused(EnvoySetup {
        filter_config: Value::String(twice),
        ..EnvoySetup::default()
    });
    assert!(
        log.contains("require[0].claims.groups: is written twice"),
        "{log}"
    );
    let mut misplaced = config(json!({}));
    misplaced["sts"]["client_auth"] = json!("Tr0ub4dor");
    let log = Envoy::refused(EnvoySetup {
        filter_config: misplaced,
        ..EnvoySetup::default()
    });
    assert!(log.contains("sts.client_auth"), "{log}");
    assert!(!log.contains("Tr0ub4dor"), "{log}");
}

#[test]
fn a_shared_introspection_answer_is_judged_by_the_listener_that_reads_it() {
    // D2: two listeners share the VM (and its shared data); the first trusts any audience, the
    // second requires its own. The first one's answer must not make the second trust a token
    // for another audience.
    let sts = TestSts::start(0, mint);
    let idp = TestSts::start(0, |_, _| {
        StsReply::json(
            200,
            json!({ "active": true, "iss": "https://p.test", "sub": "x",
                                    "aud": "api://other" }),
        )
    });
    let lax = config(json!({ "trusted_issuers": [introspecting("https://p.test", "idp")] }));
    let mut strict_issuer = introspecting("https://p.test", "idp");
    strict_issuer["audiences"] = json!(["api://edge"]);
    let strict = config(json!({ "trusted_issuers": [strict_issuer] }));
    let second = support::free_port();
    let setup = EnvoySetup {
        filter_config: lax,
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 1,
        clusters: &[("idp", idp.port)],
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start_edited(setup, |doc| {
        let listeners = doc["static_resources"]["listeners"].as_array_mut().unwrap();
        let mut other = listeners[0].clone();
        other["name"] = json!("second");
        other["address"]["socket_address"]["port_value"] = json!(second);
        let filter =
            &mut other["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
        support::set_filter_config(filter, &strict);
        listeners.push(other);
    });
    let r = envoy.get_with_token("/", "shared-opaque");
    assert_eq!(r.status, 200, "{}", r.body);
    let text = raw_request_to(second, "shared-opaque");
    assert_eq!(status_of(&text), 401, "{text}");
    assert!(text.contains("not meant for this audience"), "{text}");
    assert_eq!(idp.count(), 1, "judged from the shared answer");
}

/// A GET of `/` with `token` to the listener on `port`; the whole answer.
fn raw_request_to(port: u16, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
