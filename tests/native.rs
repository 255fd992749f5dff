//! The native module's own promises, in Envoy (`make e2e-native`; the shared suites run against
//! it too): it says at load which Envoy and ABI it was built for, and a route of Envoy's own
//! route table carries a rule of its own (`DynamicModuleFilterPerRoute`), applied before the
//! filter's `routes`; a rule the filter cannot take makes Envoy refuse the configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::{mint, start_echo, Envoy, EnvoySetup, StsCall, TestSts};

fn per_route(rule: &Value) -> Value {
    json!({ "token_exchange": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute",
        "dynamic_module_config": { "name": "token_exchange", "do_not_close": true },
        "filter_name": "token_exchange",
        "filter_config": { "@type": "type.googleapis.com/google.protobuf.StringValue",
                           "value": rule.to_string() } } })
}

fn setup(sts: &TestSts) -> EnvoySetup<'static> {
    assert!(support::native(), "run by `make e2e-native`");
    EnvoySetup {
        filter_config: json!({
            "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                     "client_id": "edge", "client_secret": "s" },
            "exchange": { "audience": ["default-api"] },
            "routes": [{ "match": { "path_prefix": "/health" }, "bypass": true }]
        }),
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 2,
        ..EnvoySetup::default()
    }
}

/// Envoy routes `/orders` and `/open` with rules of their own, the rest as the filter says.
fn routed<'a>(rules: &'a [(&'a str, Value)]) -> impl FnOnce(&mut Value) + 'a {
    move |doc: &mut Value| {
        let vhosts = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"]
            .as_array_mut()
            .unwrap();
        let routes = vhosts.last_mut().unwrap()["routes"].as_array_mut().unwrap();
        for (prefix, rule) in rules.iter().rev() {
            routes.insert(
                0,
                json!({ "match": { "prefix": prefix }, "route": { "cluster": "echo" },
                                     "typed_per_filter_config": per_route(rule) }),
            );
        }
    }
}

fn audience(call: &StsCall) -> String {
    call.fields("audience").join(" ")
}

#[test]
fn a_route_of_envoys_table_carries_its_own_rule() {
    let sts = TestSts::start(0, mint);
    let rules = [
        (
            "/orders",
            json!({ "exchange": { "audience": ["orders-api"], "scope": "orders:read" } }),
        ),
        ("/open", json!({ "bypass": true })),
    ];
    let envoy = Envoy::start_edited(setup(&sts), routed(&rules));
    let log = envoy.log_text();
    assert!(
        log.contains("built for Envoy 1.40 (dynamic-module ABI v0.2.0)"),
        "the module says what it was built for:\n{log}"
    );
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched"),
        "Envoy takes the module's ABI version as its own:\n{log}"
    );
    let r = envoy.get_with_token("/orders/7", "alice-token");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = envoy.get_with_token("/elsewhere", "alice-token");
    assert_eq!(r.status, 200, "{}", r.body);
    let calls = sts.calls();
    assert_eq!(calls.len(), 2, "one exchange per audience");
    assert_eq!(audience(&calls[0]), "orders-api");
    assert_eq!(calls[0].field("scope"), Some("orders:read"));
    assert_eq!(audience(&calls[1]), "default-api");
    // The route's bypass: the caller's token goes on untouched, no exchange.
    let r = envoy.get_with_token("/open/x", "bob-token");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("authorization"),
        Some(json!("Bearer bob-token"))
    );
    // The route's rule comes before the filter's own: /orders is not bypassed by a filter rule,
    // and a request of another route still meets the filter's routes.
    let r = envoy.get("/health", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sts.count(), 2);
    // The same token on the same route again: the route's engine serves it from the cache.
    assert_eq!(envoy.get_with_token("/orders/8", "alice-token").status, 200);
    assert_eq!(sts.count(), 2);
}

#[test]
fn a_rule_the_filter_cannot_take_is_refused_at_load() {
    let sts = TestSts::start(0, mint);
    for (rule, words) in [
        (
            json!({ "match": { "path_prefix": "/" } }),
            "unknown key \"match\"",
        ),
        (json!({ "exchange": { "audiense": ["x"] } }), "audiense"),
        (
            json!({ "introspect": "https://nobody.example" }),
            "introspect",
        ),
    ] {
        let setup = setup(&sts);
        let rules = [("/orders", rule.clone())];
        // Envoy loads the route before the filter, so the filter's configuration is refused,
        // naming the route's rule.
        let log = Envoy::refused_edited(setup, routed(&rules));
        assert!(
            log.contains("refused a route's rule")
                || log.contains("refused its configuration: a route's rule"),
            "{rule}:\n{log}"
        );
        assert!(log.contains(words), "{rule}: {words}:\n{log}");
    }
}

/// Every Envoy callback the module calls is one the pinned Envoy binary exports (`nm -D`), so
/// no hook fails on a missing symbol at the first request that needs it.
#[test]
fn every_callback_the_module_calls_is_exported_by_envoy() {
    let symbols = |args: &[&str], file: &std::path::Path| -> Vec<String> {
        let out = std::process::Command::new("nm")
            .args(args)
            .arg(file)
            .output()
            .expect("nm (binutils)");
        assert!(out.status.success(), "nm {}", file.display());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
            .collect()
    };
    let module = support::native_dir().join("libtoken_exchange.so");
    let used = symbols(&["-D", "--undefined-only"], &module);
    assert!(used.len() >= 20, "{used:?}");
    let exported = symbols(&["-D", "--defined-only"], &support::envoy_executable());
    for symbol in used {
        assert!(exported.contains(&symbol), "Envoy does not export {symbol}");
    }
}
