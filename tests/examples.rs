//! Every configuration example in the repository (README, `docs/`, `envoy.yaml`, `deploy/`)
//! parses with the filter's own parser, and every relative link of the documents names a file
//! that exists, so no example or link can rot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::OnceLock;

use token_exchange_wasm::config::Config;
use token_exchange_wasm::engine::Engine;

const BASE_STS: &str = r#""sts": {"cluster": "sts", "authority": "sts.example.com", "token_path": "/oauth2/token", "client_id": "edge-proxy", "client_secret": "x"}"#;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A PEM key for `*_KEY` variables, a plain secret for the others.
fn env(name: &str) -> Option<String> {
    static PEM: OnceLock<String> = OnceLock::new();
    if name.ends_with("_KEY") {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let pem = PEM.get_or_init(|| {
            let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
            key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string()
        });
        Some(pem.clone())
    } else {
        Some("example-secret".to_string())
    }
}

fn check(where_: &str, json: &[u8]) {
    // As the filter loads it: validated, then compiled.
    if let Err(e) = Config::parse(json, &env).and_then(Engine::new) {
        panic!("{where_}: {e}\n{}", String::from_utf8_lossy(json));
    }
}

/// The filter configurations of a manifest: each Istio `WasmPlugin`'s `pluginConfig` and each
/// Envoy Gateway `EnvoyExtensionPolicy` wasm extension's `config`.
fn plugin_configs(yaml: &str) -> Vec<serde_json::Value> {
    let as_json = |v: &serde_yaml::Value| serde_json::to_value(v).expect("a config as JSON");
    yaml_docs(yaml)
        .iter()
        .flat_map(|doc| match doc["kind"].as_str() {
            Some("WasmPlugin") => vec![as_json(&doc["spec"]["pluginConfig"])],
            Some("EnvoyExtensionPolicy") => doc["spec"]["wasm"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|w| as_json(&w["config"]))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The clusters a filter configuration calls: the STS's and each `jwks_uri`'s, with the
/// authority the filter sends to each.
fn called_clusters(config: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut out = vec![(
        config["sts"]["cluster"].as_str().unwrap().to_string(),
        config["sts"]["authority"].as_str().unwrap().to_string(),
    )];
    for i in config["trusted_issuers"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        if let Some(c) = i["jwks_uri"]["cluster"].as_str() {
            let authority = i["jwks_uri"]["authority"].as_str().unwrap();
            out.push((c.to_string(), authority.to_string()));
        }
    }
    out
}

#[test]
fn envoy_yaml_configuration_parses() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("envoy.yaml")).expect("envoy.yaml is YAML");
    let filters = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let value = filters[0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("the filter's configuration value");
    check("envoy.yaml", value.as_bytes());
}

#[test]
fn istio_wasmplugin_config_parses() {
    let configs = plugin_configs(&read("deploy/istio/wasmplugin.yaml"));
    assert_eq!(configs.len(), 1);
    for c in configs {
        check("deploy/istio/wasmplugin.yaml", c.to_string().as_bytes());
    }
}

#[test]
fn envoy_gateway_policy_config_parses() {
    let configs = plugin_configs(&read("deploy/envoy-gateway/token-exchange.yaml"));
    assert_eq!(configs.len(), 1);
    for c in configs {
        check(
            "deploy/envoy-gateway/token-exchange.yaml",
            c.to_string().as_bytes(),
        );
    }
}

#[test]
fn envoy_gateway_clusters_are_the_ones_the_filter_calls_and_check_certificate_names() {
    let docs = yaml_docs(&read("deploy/envoy-gateway/token-exchange.yaml"));
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyExtensionPolicy")
        .unwrap();
    let wasm = &policy["spec"]["wasm"][0];
    assert_eq!(
        wasm["failOpen"], false,
        "a filter that failed lets nothing pass"
    );
    let patch = docs
        .iter()
        .find(|d| d["kind"] == "EnvoyPatchPolicy")
        .unwrap();
    assert_eq!(
        patch["spec"]["targetRef"], policy["spec"]["targetRefs"][0],
        "the clusters are added where the filter runs"
    );
    let added: Vec<&serde_yaml::Value> = patch["spec"]["jsonPatches"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster")
        .map(|p| &p["operation"]["value"])
        .collect();
    let called = called_clusters(&wasm["config"]);
    assert_eq!(
        added.len(),
        called.len(),
        "one cluster for each server the filter calls"
    );
    for (name, authority) in called {
        let cluster = added
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no cluster {name} in the EnvoyPatchPolicy"));
        let tls = &cluster["transport_socket"]["typed_config"];
        assert_eq!(
            tls["sni"],
            authority.as_str(),
            "{name}: SNI is the authority"
        );
        let validation = &tls["common_tls_context"]["validation_context"];
        assert!(
            validation["trusted_ca"].is_mapping(),
            "{name}: the server's CA is checked"
        );
        let sans = &validation["match_typed_subject_alt_names"];
        assert_eq!(
            sans[0]["matcher"]["exact"],
            authority.as_str(),
            "{name}: the name is checked"
        );
        let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"]["address"];
        assert_eq!(
            address,
            authority.as_str(),
            "{name}: the cluster reaches the authority"
        );
    }
}

/// The project's documents: the README, `ARCHITECTURE.md` and every file under `docs/`.
fn documents() -> Vec<String> {
    let mut out = vec!["README.md".to_string(), "ARCHITECTURE.md".to_string()];
    let mut dirs = vec![support::repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                let rel = path
                    .strip_prefix(support::repo())
                    .expect("under the repository");
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_documented_configuration_example_parses() {
    let mut checked = 0;
    for doc in documents() {
        checked += examples_in(&doc);
    }
    assert!(checked >= 15, "only {checked} configuration examples found");
}

/// Parses each JSON configuration block and each manifest configuration (`plugin_configs`) of document
/// `name` with the filter's own parser; how many it checked.
fn examples_in(name: &str) -> usize {
    let text = read(name);
    let mut checked = 0;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let lang = match line.trim() {
            "```json" => "json",
            "```yaml" => "yaml",
            _ => continue,
        };
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let text = block.join("\n");
        if lang == "yaml" {
            for c in plugin_configs(&text) {
                check(&format!("{name} (manifest)"), c.to_string().as_bytes());
                checked += 1;
            }
            checked += native_configs_in(name, &text);
            continue;
        }
        let trimmed = text.trim();
        let json = if trimmed.starts_with('{') {
            trimmed.to_string()
        } else if trimmed.starts_with("\"sts\"") {
            format!("{{{trimmed}}}")
        } else {
            format!("{{{BASE_STS}, {trimmed}}}")
        };
        check(name, json.as_bytes());
        checked += 1;
    }
    checked
}

/// Checks each native module configuration in a YAML block: a `DynamicModuleFilter`'s
/// `filter_config` as the filter's configuration, a `DynamicModuleFilterPerRoute`'s as a route
/// rule of one; how many it checked.
fn native_configs_in(name: &str, yaml: &str) -> usize {
    fn walk(v: &serde_yaml::Value, out: &mut Vec<(bool, String)>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                let kind = v["@type"].as_str().unwrap_or_default();
                if let Some(value) = v["filter_config"]["value"].as_str() {
                    if kind.ends_with(".DynamicModuleFilter") {
                        out.push((false, value.to_string()));
                    } else if kind.ends_with(".DynamicModuleFilterPerRoute") {
                        out.push((true, value.to_string()));
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(yaml) else {
        return 0;
    };
    let mut found = Vec::new();
    walk(&doc, &mut found);
    for (per_route, value) in &found {
        let json = if *per_route {
            format!("{{{BASE_STS}, \"routes\": [{value}]}}")
        } else {
            value.clone()
        };
        check(&format!("{name} (native module)"), json.as_bytes());
    }
    found.len()
}

#[test]
fn the_native_modules_examples_are_checked() {
    let per_block: usize = read("docs/native.md")
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(|b| native_configs_in("docs/native.md", b))
        .sum();
    assert_eq!(
        per_block, 2,
        "the filter and the per-route rule of docs/native.md"
    );
}

#[test]
fn every_relative_link_in_the_documents_names_a_file_that_exists() {
    for doc in documents() {
        let text = read(&doc);
        let base = support::repo().join(&doc);
        let dir = base.parent().expect("a folder");
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http")
                || target.starts_with('#')
                || target.starts_with("mailto:")
            {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            assert!(
                dir.join(file).exists(),
                "{doc} links to {target}, which is not there"
            );
        }
    }
}

fn yaml_docs(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .collect()
}

#[test]
fn istio_clusters_check_certificate_names_and_stay_on_the_gateway() {
    let docs = yaml_docs(&read("deploy/istio/wasmplugin.yaml"));
    let plugin = docs.iter().find(|d| d["kind"] == "WasmPlugin").unwrap();
    let gateway = &plugin["spec"]["selector"]["matchLabels"];
    assert!(gateway.is_mapping(), "the WasmPlugin selects its workload");
    assert!(
        ["AUTHN", "AUTHZ"].contains(&plugin["spec"]["phase"].as_str().unwrap()),
        "phase is one the README explains"
    );
    for (cluster, _) in called_clusters(&plugin["spec"]["pluginConfig"]) {
        let host = cluster.rsplit("||").next().unwrap();
        let entry = docs
            .iter()
            .find(|d| d["kind"] == "ServiceEntry" && d["spec"]["hosts"][0] == host)
            .unwrap_or_else(|| panic!("no ServiceEntry for {host}"));
        assert_eq!(
            entry["spec"]["exportTo"][0], ".",
            "{host}: ServiceEntry scoped"
        );
        let rule = docs
            .iter()
            .find(|d| d["kind"] == "DestinationRule" && d["spec"]["host"] == host)
            .unwrap_or_else(|| panic!("no DestinationRule for {host}"));
        let spec = &rule["spec"];
        assert_eq!(spec["exportTo"][0], ".", "{host}: DestinationRule scoped");
        assert_eq!(
            &spec["workloadSelector"]["matchLabels"], gateway,
            "{host}: DestinationRule applies to the gateway only"
        );
        let tls = &spec["trafficPolicy"]["tls"];
        assert_eq!(tls["mode"], "SIMPLE", "{host}: TLS to the server");
        let sans: Vec<&str> = tls["subjectAltNames"]
            .as_sequence()
            .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert!(
            sans.contains(&host),
            "{host}: with sni set, Istio checks no name unless subjectAltNames lists it"
        );
    }
}

#[test]
fn envoy_yaml_normalizes_paths_like_the_filter() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read("envoy.yaml")).expect("envoy.yaml is YAML");
    for listener in doc["static_resources"]["listeners"].as_sequence().unwrap() {
        for chain in listener["filter_chains"].as_sequence().unwrap() {
            for f in chain["filters"].as_sequence().unwrap() {
                let hcm = &f["typed_config"];
                assert_eq!(hcm["normalize_path"], true);
                assert_eq!(hcm["merge_slashes"], true);
                let action = hcm["path_with_escaped_slashes_action"]
                    .as_str()
                    .unwrap_or("");
                assert!(
                    ["UNESCAPE_AND_REDIRECT", "REJECT_REQUEST"].contains(&action),
                    "escaped slashes: {action:?}"
                );
            }
        }
    }
}

/// Every environment variable the scripts and tests read is listed in the Makefile's `#:` lines,
/// which `make help` prints.
#[test]
fn every_environment_knob_is_documented_in_make_help() {
    let makefile = read("Makefile");
    let documented: Vec<&str> = makefile
        .lines()
        .filter_map(|l| l.strip_prefix("#: "))
        .filter_map(|l| l.split('=').next())
        .collect();
    let mut read_somewhere = Vec::new();
    for file in ["bench/run.py", "bench/fleet.py", "tests/support/mod.rs"] {
        let text = read(file);
        for marker in ["os.environ.get(\"", "env::var_os(\"", "env::var(\""] {
            for (i, _) in text.match_indices(marker) {
                let name: String = text[i + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                read_somewhere.push((file, name));
            }
        }
    }
    assert!(read_somewhere.len() >= 10, "{read_somewhere:?}");
    for (file, name) in read_somewhere {
        assert!(
            documented.contains(&name.as_str()),
            "{file} reads {name}, which `make help` does not list"
        );
    }
    for (target, doc) in [("FUZZ_SECONDS", "fuzz"), ("FUZZ_TARGETS", "fuzz")] {
        assert!(documented.contains(&target), "{target} ({doc})");
    }
}

/// Every metric the Grafana dashboard queries is one the filter defines (by its Prometheus name:
/// dots become underscores; a histogram adds `_bucket`).
#[test]
fn the_dashboard_queries_metrics_the_filter_defines() {
    let defined: Vec<String> = token_exchange_wasm::metrics::Metric::all()
        .into_iter()
        .map(|m| m.name().replace('.', "_"))
        .collect();
    let queried = support::dashboard_metrics();
    assert!(queried.len() >= 15, "only {queried:?}");
    for name in queried {
        let base = name.strip_suffix("_bucket").unwrap_or(&name);
        assert!(
            defined.iter().any(|d| d == base),
            "{name} is not a metric of the filter"
        );
    }
}
