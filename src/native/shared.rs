//! Shared data as process memory: what proxy-wasm's shared data is to the wasm module, with the
//! same compare-and-swap rules (a version per entry; a write naming a version other than the
//! entry's is refused; a write to a new key, or one naming no version, always lands), shared by
//! every worker and every filter configuration of the process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::host::HostError;

/// Every entry with its version, and the last version handed out.
#[derive(Default)]
struct Table {
    entries: HashMap<String, (Vec<u8>, u32)>,
    version: u32,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The value under `key` with its version.
pub fn get(key: &str) -> Option<(Vec<u8>, u32)> {
    let table = table().lock().unwrap_or_else(PoisonError::into_inner);
    table.entries.get(key).cloned()
}

/// Stores `value` under `key`; with a non-zero `cas`, only if the entry still has that version.
pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
    let mut table = table().lock().unwrap_or_else(PoisonError::into_inner);
    let current = table.entries.get(key).map(|(_, v)| *v);
    if let (Some(now), Some(expected)) = (current, cas) {
        if expected != 0 && expected != now {
            return Err(HostError("shared data changed since it was read".into()));
        }
    }
    table.version = table.version.wrapping_add(1).max(1);
    let version = table.version;
    table
        .entries
        .insert(key.to_string(), (value.to_vec(), version));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_naming_an_old_version_is_refused() {
        let key = "native-shared-test";
        set(key, b"a", None).unwrap();
        let (_, v1) = get(key).unwrap();
        set(key, b"b", Some(v1)).unwrap();
        assert!(
            set(key, b"c", Some(v1)).is_err(),
            "a stale version must not write"
        );
        assert_eq!(get(key).unwrap().0, b"b");
        let fresh = "native-shared-test-new";
        set(fresh, b"x", Some(7)).unwrap();
        assert_eq!(get(fresh).unwrap().0, b"x");
    }
}
