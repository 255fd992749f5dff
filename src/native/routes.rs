//! Per route through Envoy's route table: a `DynamicModuleFilterPerRoute` whose `filter_config`
//! is a JSON object with the keys of a route rule other than `match` (`exchange`, `bypass`,
//! `require`, `introspect`, `dpop`) applies to the requests of that Envoy route, before the
//! filter's own `routes`.
//!
//! Such a rule becomes the first, match-all rule of the filter's configuration, and that
//! configuration an engine of its own, made when the route's first request comes. The engines
//! of one filter configuration share what the wasm module's workers share (the cache, key sets,
//! consents, the claim slots: shared data), so they keep the same cross-worker promises: one key
//! fetch, one consent prompt, one refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use serde_json::{Map, Value};

use crate::config::Config;
use crate::engine::Engine;

/// The keys a per-route configuration may hold.
const RULE_KEYS: [&str; 5] = ["exchange", "bypass", "require", "introspect", "dpop"];

/// One Envoy route's rule (`envoy_dynamic_module_type_http_filter_per_route_config_module_ptr`).
pub struct PerRoute {
    /// Tells the engines made for this rule apart.
    pub id: u64,
    rule: Map<String, Value>,
}

/// The filter's engine and one per Envoy route with its own rule.
pub struct RouteEngines {
    /// The engine of the filter's configuration as written.
    pub base: Engine,
    routes: HashMap<u64, Engine>,
    source: Vec<u8>,
}

/// Reads the secrets a configuration names from Envoy's environment.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The filter configurations (filter name, text as written) and the routes' rules (filter
/// name, rule) alive in this process: Envoy may load a route before or after the filter it
/// configures, and whichever comes second is checked against the other.
#[derive(Default)]
struct Live {
    sources: HashMap<usize, (String, Vec<u8>)>,
    rules: HashMap<u64, (String, Map<String, Value>)>,
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// `source` with `rule` as its first route rule, matching every request.
fn with_rule(source: &[u8], rule: &Map<String, Value>) -> Result<Engine, String> {
    let mut doc: Value = serde_json::from_slice(source).map_err(|e| e.to_string())?;
    let routes = doc
        .as_object_mut()
        .ok_or("the filter's configuration is not an object")?
        .entry("routes")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = routes.as_array_mut() else {
        return Err("routes: must be a list".into());
    };
    list.insert(0, Value::Object(rule.clone()));
    let text = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
    Config::parse(&text, &env)
        .and_then(Engine::new)
        .map_err(|e| e.to_string().replace("routes[0].", "per-route "))
}

impl PerRoute {
    /// Reads a route's rule for filter `name`, and checks it against every configuration of
    /// that filter alive.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<PerRoute, String> {
        let rule: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| format!("per-route configuration: not a JSON object: {e}"))?;
        if let Some(key) = rule.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "per-route configuration: unknown key {key:?} (one of {})",
                RULE_KEYS.join(", ")
            ));
        }
        let mut live = live();
        for (filter, source) in live.sources.values() {
            if filter == name {
                with_rule(source, &rule)?;
            }
        }
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        live.rules.insert(id, (name.to_string(), rule.clone()));
        Ok(PerRoute { id, rule })
    }

    /// Forgets a rule (its route is being destroyed).
    pub fn forget(&self) {
        live().rules.remove(&self.id);
    }
}

impl RouteEngines {
    /// Checks every rule alive for filter `name` against its configuration `source`.
    pub fn check_rules(name: &str, source: &[u8]) -> Result<(), String> {
        let live = live();
        for (filter, rule) in live.rules.values() {
            if filter == name {
                with_rule(source, rule).map_err(|e| format!("a route's rule: {e}"))?;
            }
        }
        Ok(())
    }

    /// The engines of configuration `source` (as written) of filter `name`, whose own engine
    /// is `base`; registered under `key` for the routes' rules to be checked against.
    pub fn new(base: Engine, name: &str, source: &[u8], key: usize) -> Self {
        live()
            .sources
            .insert(key, (name.to_string(), source.to_vec()));
        RouteEngines {
            base,
            routes: HashMap::new(),
            source: source.to_vec(),
        }
    }

    /// Forgets the configuration registered under `key` (it is being destroyed).
    pub fn forget(key: usize) {
        live().sources.remove(&key);
    }

    /// The engine for requests of a route with rule `route` (`None`: the filter's own); a new
    /// one is made, and true returned, the first time.
    pub fn for_route(&mut self, route: Option<&PerRoute>) -> Result<(&mut Engine, bool), String> {
        let Some(route) = route else {
            return Ok((&mut self.base, false));
        };
        let made = !self.routes.contains_key(&route.id);
        if made {
            let engine = with_rule(&self.source, &route.rule)?;
            self.routes.insert(route.id, engine);
        }
        match self.routes.get_mut(&route.id) {
            Some(engine) => Ok((engine, made)),
            None => Err("no engine for the route".into()),
        }
    }

    /// The engine a request was given (`None`: the filter's own).
    pub fn get(&mut self, key: Option<u64>) -> Option<&mut Engine> {
        match key {
            None => Some(&mut self.base),
            Some(k) => self.routes.get_mut(&k),
        }
    }

    /// Every engine with its key.
    pub fn all(&mut self) -> impl Iterator<Item = (Option<u64>, &mut Engine)> {
        std::iter::once((None, &mut self.base))
            .chain(self.routes.iter_mut().map(|(k, e)| (Some(*k), e)))
    }
}
