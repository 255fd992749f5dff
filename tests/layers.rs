//! The shape of the code, held as a test so it stays after whoever made it: modules only look
//! down (no module imports one that imports it back, directly or through others), no file's
//! non-test code passes its size, and only the glue knows proxy-wasm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The most non-test lines a file may have; the engine, a dispatcher, is held to less.
const MAX_LINES: usize = 500;
const MAX_ENGINE_LINES: usize = 400;

/// Every source file: (module it belongs to, file name, non-test code without comments).
fn sources() -> Vec<(String, String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let module = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // Test code: a `tests.rs` file, a file in a `tests/` folder, or all from the first
            // `#[cfg(test)]` on.
            let in_tests = rel.components().any(|c| c.as_os_str() == "tests");
            let code: String = if rel.ends_with("tests.rs") || in_tests {
                String::new()
            } else {
                text.lines()
                    .take_while(|l| !l.starts_with("#[cfg(test)]"))
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| format!("{l}\n"))
                    .collect()
            };
            out.push((module, rel.display().to_string(), code));
        }
    }
    out
}

/// Module → the crate modules its non-test code names (`crate::x`, or `super::x` at the top).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, _, code) in sources() {
        let deps = g.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + 7..];
            // `crate::a::…`, or a group `crate::{a, b::c}`.
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for n in names {
                let name: String = n
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name != "self" {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// A cycle through `start`, if any, as the path that closes it.
fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
        if next == start {
            let mut found = path.clone();
            found.push(next.clone());
            return Some(found);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(g, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(g.len() > 10, "found too few modules: {g:?}");
    for start in g.keys() {
        let mut path = vec![start.clone()];
        if let Some(cycle) = cycle_from(&g, start, start, &mut path, &mut BTreeSet::new()) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_configuration_imports_nothing_of_the_crate() {
    let g = graph();
    assert_eq!(
        g["config"],
        BTreeSet::new(),
        "config imports {:?}",
        g["config"]
    );
}

#[test]
fn files_stay_small_and_the_engine_stays_a_dispatcher() {
    for (_, file, code) in sources() {
        let lines = code.lines().count();
        let max = if file == "engine/mod.rs" {
            MAX_ENGINE_LINES
        } else {
            MAX_LINES
        };
        assert!(
            lines <= max,
            "{file}: {lines} lines of non-test code (at most {max})"
        );
    }
}

#[test]
fn only_the_glue_knows_proxy_wasm() {
    for (_, file, code) in sources() {
        if file != "filter.rs" {
            assert!(!code.contains("proxy_wasm"), "{file} names proxy_wasm");
        }
    }
}

#[test]
fn only_the_glue_holds_unsafe_code() {
    for (module, file, code) in sources() {
        if !["filter", "abi", "native"].contains(&module.as_str()) {
            assert!(!code.contains("unsafe"), "{file} holds unsafe code");
        }
    }
}

#[test]
fn every_call_is_sent_from_the_engines_call_table() {
    for (_, file, code) in sources() {
        if file != "engine/calls.rs" && file != "host.rs" && file != "filter.rs" {
            assert!(
                !code.contains(".dispatch("),
                "{file} dispatches a call itself: return it for engine/calls.rs to send"
            );
        }
    }
}

#[test]
fn the_check_finds_a_cycle_when_there_is_one() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    let mut path = vec!["a".to_string()];
    let found = cycle_from(&g, "a", "a", &mut path, &mut BTreeSet::new());
    assert_eq!(found.unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    let mut path = vec!["a".to_string()];
    assert!(cycle_from(&g, "a", "a", &mut path, &mut BTreeSet::new()).is_none());
}

/// `ARCHITECTURE.md`'s code map stays true to the code: every path it names exists, and every
/// file and folder directly under `src/` is named in it.
#[test]
fn the_code_map_names_every_part_and_only_parts_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named: BTreeSet<String> = map
        .split('`')
        .filter(|w| w.starts_with("src/"))
        .map(|w| w.trim_end_matches('/').to_string())
        .collect();
    for path in &named {
        assert!(
            root.join(path).exists(),
            "ARCHITECTURE.md names {path}, which is not there"
        );
    }
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name == "lib.rs" {
            continue;
        }
        let path = format!("src/{}", name.trim_end_matches('/'));
        let mentioned = named.contains(&path) || map.contains(&format!("`{path}`"));
        assert!(mentioned, "ARCHITECTURE.md's code map does not name {path}");
    }
}

/// The most fields the engine may hold: its parts belong to the stages that use them, not to
/// one object that grows a field per feature.
const MAX_ENGINE_FIELDS: usize = 8;

/// The engine's stages, each the files that hold it: a stage owns its parts and names no
/// other stage (the dispatcher in `engine/mod.rs` moves a request from one to the next).
const STAGES: [(&str, &[&str]); 5] = [
    ("trust", &["trust.rs"]),
    ("binding", &["binding.rs"]),
    ("authorize", &["authorize.rs"]),
    (
        "exchange",
        &["exchange.rs", "exchanged.rs", "refresh_evict.rs"],
    ),
    ("consent", &["consent.rs"]),
];

#[test]
fn the_engine_is_one_dispatcher_over_stages_that_name_no_other() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    for (_, file, code) in sources() {
        if code.contains("impl Engine") {
            assert_eq!(
                file, "engine/mod.rs",
                "{file}: impl Engine outside the dispatcher"
            );
        }
    }
    for (stage, files) in STAGES {
        for file in files {
            let text = std::fs::read_to_string(engine.join(file)).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (other, other_files) in STAGES {
                if other == stage {
                    continue;
                }
                for f in other_files {
                    let module = f.trim_end_matches(".rs");
                    for named in [format!("super::{module}::"), format!("super::{module};")] {
                        assert!(
                            !code.contains(&named),
                            "{file} ({stage}) names {module} ({other})"
                        );
                    }
                    let grouped = format!("super::{{{module}");
                    assert!(
                        !code.contains(&grouped),
                        "{file} ({stage}) names {module} ({other})"
                    );
                }
            }
        }
    }
}

#[test]
fn the_engine_holds_no_more_parts_than_it_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = std::fs::read_to_string(root.join("src/engine/mod.rs")).unwrap();
    let start = code.find("pub struct Engine {").expect("the engine");
    let body = &code[start..];
    let body = &body[..body.find("\n}").expect("its end")];
    let fields = body
        .lines()
        .skip(1)
        .filter(|l| !l.trim_start().starts_with("//") && l.contains(':'))
        .count();
    assert!(
        fields <= MAX_ENGINE_FIELDS,
        "Engine has {fields} fields (at most {MAX_ENGINE_FIELDS})"
    );
}

/// The floors `ARCHITECTURE.md`'s code map gives each module (its first column), by module name.
fn floors() -> BTreeMap<String, u32> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in map.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(floor), Some(files)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(floor) = floor.parse::<u32>() else {
            continue;
        };
        for path in files.split('`').filter(|w| w.starts_with("src/")) {
            let name = path.trim_start_matches("src/").trim_end_matches('/');
            out.insert(name.trim_end_matches(".rs").to_string(), floor);
        }
    }
    out
}

/// The code map's floors are the code's: a module imports only modules on its floor or below.
#[test]
fn every_import_looks_down_the_code_maps_floors() {
    let floors = floors();
    assert!(
        floors.len() > 20,
        "the code map names too few modules: {floors:?}"
    );
    for (module, deps) in graph() {
        let Some(own) = floors.get(&module) else {
            continue;
        };
        for dep in deps {
            let Some(theirs) = floors.get(&dep) else {
                continue;
            };
            assert!(
                theirs <= own,
                "{module} (floor {own}) imports {dep} (floor {theirs}): fix the code or the map"
            );
        }
    }
}
