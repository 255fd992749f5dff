//! Fetching an issuer's keys: the call, the shared-data slots where workers share the last
//! good set and the last attempt (so that one worker fetches at a time), and whether another
//! worker's fetch is still running.

use crate::config::JwksUri;
use crate::endpoint::feed;
use crate::host::{Host, HttpCall};
use crate::jwks::Schedule;
use sha2::{Digest, Sha256};

/// A remote key set: how to fetch it and where workers share it.
pub(super) struct RemoteKeys {
    pub(super) call: HttpCall,
    pub(super) schedule: Schedule,
    /// Shared-data key of the last good set: fetch time (8 bytes) + the JWKS document.
    pub(super) keys_slot: String,
    /// Shared-data key of the last fetch attempt by any worker: start time (8 bytes) + failed.
    pub(super) attempt_slot: String,
    /// This worker's fetch in flight and when it started.
    pub(super) fetching: Option<(u32, u64)>,
    /// With OIDC discovery: where the key set is, once this worker read the document.
    pub(super) discovery: Option<Discovery>,
}

/// An issuer's keys found through its OIDC discovery document.
pub(super) struct Discovery {
    issuer: String,
    authority: String,
    doc_path: String,
    /// The path of `jwks_uri` on the cluster, once discovered.
    pub(super) jwks_path: Option<String>,
}

impl Discovery {
    /// Reads the discovery document: its `issuer` must equal ours exactly (OpenID Discovery
    /// §4.3) and its `jwks_uri` must name our authority; the key set's path, or why not.
    pub(super) fn read(&self, body: &[u8]) -> Result<String, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|_| "not a JSON object".to_string())?;
        if doc.issuer.as_deref() != Some(self.issuer.as_str()) {
            return Err("its issuer is not the configured issuer".into());
        }
        let uri = doc.jwks_uri.ok_or("no jwks_uri")?;
        let rest = uri
            .strip_prefix("https://")
            .or_else(|| uri.strip_prefix("http://"))
            .ok_or("jwks_uri is not an http(s) URI")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !authority.eq_ignore_ascii_case(&self.authority) {
            return Err("jwks_uri names another authority".into());
        }
        if path.is_empty()
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#')
        {
            return Err("jwks_uri has no usable path".into());
        }
        Ok(path.to_string())
    }

    /// The path to fetch now: the key set's once known, else the discovery document's.
    pub(super) fn path(&self) -> &str {
        self.jwks_path.as_deref().unwrap_or(&self.doc_path)
    }
}

impl RemoteKeys {
    /// How `issuer`'s keys are fetched from `uri`; the slots are named by a hash of where.
    pub(super) fn new(issuer: &str, uri: &JwksUri) -> Self {
        let mut h = Sha256::new();
        for part in [issuer, &uri.cluster, &uri.authority, &uri.path] {
            feed(&mut h, part);
        }
        let tag: String = h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        RemoteKeys {
            call: HttpCall {
                cluster: uri.cluster.clone(),
                headers: vec![
                    (":method".into(), "GET".into()),
                    (":path".into(), uri.path.clone()),
                    (":authority".into(), uri.authority.clone()),
                    ("accept".into(), "application/json".into()),
                ],
                body: String::new(),
                timeout_ms: uri.timeout_ms,
            },
            schedule: Schedule {
                refresh_ms: uri.refresh_s * 1000,
            },
            keys_slot: format!("token_exchange.jwks.{tag}"),
            attempt_slot: format!("token_exchange.jwks_attempt.{tag}"),
            fetching: None,
            discovery: None,
        }
    }

    /// How `issuer`'s keys are found through the discovery document at `uri`.
    pub(super) fn discovered(issuer: &str, uri: &JwksUri) -> Self {
        let mut remote = RemoteKeys::new(issuer, uri);
        remote.discovery = Some(Discovery {
            issuer: issuer.to_string(),
            authority: uri.authority.clone(),
            doc_path: uri.path.clone(),
            jwks_path: None,
        });
        remote
    }

    /// The call to make now (the discovery document, or the key set).
    pub(super) fn call_now(&self) -> HttpCall {
        let mut call = self.call.clone();
        if let Some(d) = &self.discovery {
            for (name, value) in &mut call.headers {
                if name == ":path" {
                    *value = d.path().to_string();
                }
            }
        }
        call
    }
}

/// The last fetch attempt any worker made for one issuer.
#[derive(Clone, Copy, Default)]
pub(super) struct Attempt {
    pub(super) at: Option<u64>,
    pub(super) failed: bool,
    /// Failed fetches in a row, this one included when it failed.
    pub(super) failures: u32,
    pub(super) cas: Option<u32>,
}

impl Attempt {
    /// The failures in a row that the schedule backs off by (0 unless the last one failed).
    pub(super) fn backoff_failures(&self) -> u32 {
        if self.failed {
            self.failures.max(1)
        } else {
            0
        }
    }
}

/// Another worker's fetch of newer keys started and has not timed out.
pub(super) fn in_progress(attempt: &Attempt, version: u64, remote: &RemoteKeys, now: u64) -> bool {
    attempt.at.is_some_and(|at| {
        !attempt.failed
            && at > version
            && now.saturating_sub(at) <= remote.call.timeout_ms.saturating_add(1000)
    })
}

/// An attempt's slot value: its start, whether it failed, and the failures in a row so far.
pub(super) fn encode_attempt(at: u64, failed: bool, failures: u32) -> Vec<u8> {
    let mut v = at.to_be_bytes().to_vec();
    v.push(u8::from(failed));
    v.extend_from_slice(&failures.to_be_bytes());
    v
}

pub(super) fn read_attempt<H: Host>(host: &H, slot: &str) -> Attempt {
    match host.shared_get(slot) {
        Some((bytes, cas)) => match split_stamp(&bytes) {
            Some((at, rest)) => Attempt {
                at: Some(at),
                failed: rest.first() == Some(&1),
                failures: rest
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes),
                cas: Some(cas),
            },
            None => Attempt {
                cas: Some(cas),
                ..Attempt::default()
            },
        },
        None => Attempt::default(),
    }
}

/// Splits an 8-byte big-endian time stamp off the front of a shared-data value.
pub(super) fn split_stamp(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (stamp, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*stamp), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    fn uri(path: &str) -> JwksUri {
        JwksUri {
            cluster: "idp".into(),
            authority: "idp.example".into(),
            path: path.into(),
            refresh_s: 300,
            timeout_ms: 2_000,
        }
    }

    #[test]
    fn each_issuer_and_place_has_slots_of_its_own() {
        let a = RemoteKeys::new("https://a", &uri("/jwks"));
        let b = RemoteKeys::new("https://b", &uri("/jwks"));
        let c = RemoteKeys::new("https://a", &uri("/other"));
        assert_ne!(a.keys_slot, b.keys_slot);
        assert_ne!(a.keys_slot, c.keys_slot);
        assert_ne!(a.keys_slot, a.attempt_slot);
        assert_eq!(
            a.keys_slot,
            RemoteKeys::new("https://a", &uri("/jwks")).keys_slot
        );
        assert_eq!(a.call.cluster, "idp");
        assert!(a.call.headers.contains(&(":path".into(), "/jwks".into())));
        assert_eq!(a.schedule.refresh_ms, 300_000);
    }

    #[test]
    fn an_attempt_reads_back_and_counts_as_running_until_its_timeout() {
        let h = FakeHost::at(0);
        let r = RemoteKeys::new("https://a", &uri("/jwks"));
        assert_eq!(read_attempt(&h, &r.attempt_slot).at, None);
        h.shared_set(&r.attempt_slot, &encode_attempt(10_000, false, 0), None)
            .unwrap();
        let a = read_attempt(&h, &r.attempt_slot);
        assert_eq!((a.at, a.failed, a.cas), (Some(10_000), false, Some(1)));
        assert!(
            in_progress(&a, 5_000, &r, 12_000),
            "newer than the keys at hand"
        );
        assert!(
            !in_progress(&a, 10_000, &r, 12_000),
            "not newer than the keys at hand"
        );
        assert!(
            !in_progress(&a, 5_000, &r, 13_001),
            "past the timeout and a second"
        );
        h.shared_set(&r.attempt_slot, &encode_attempt(10_000, true, 3), None)
            .unwrap();
        let failed = read_attempt(&h, &r.attempt_slot);
        assert!(failed.failed && !in_progress(&failed, 5_000, &r, 12_000));
        assert_eq!((failed.failures, failed.backoff_failures()), (3, 3));
        h.shared_set(&r.attempt_slot, &[0, 0, 0, 0, 0, 0, 0, 9, 1], None)
            .unwrap();
        assert_eq!(
            read_attempt(&h, &r.attempt_slot).backoff_failures(),
            1,
            "an older slot value"
        );
        h.shared_set(&r.attempt_slot, b"short", None).unwrap();
        assert_eq!(
            read_attempt(&h, &r.attempt_slot).at,
            None,
            "garbage reads as none"
        );
        assert_eq!(
            split_stamp(&[0, 0, 0, 0, 0, 0, 0, 5, 42]),
            Some((5, &[42][..]))
        );
    }

    #[test]
    fn a_discovery_document_names_our_issuer_and_a_key_set_on_our_authority() {
        let r = RemoteKeys::discovered(
            "https://idp.example",
            &uri("/.well-known/openid-configuration"),
        );
        let d = r.discovery.as_ref().unwrap();
        let call_path = |r: &RemoteKeys| {
            r.call_now()
                .headers
                .iter()
                .find(|(n, _)| n == ":path")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            call_path(&r).as_deref(),
            Some("/.well-known/openid-configuration")
        );
        let doc = |iss: &str, jwks: &str| format!(r#"{{"issuer":"{iss}","jwks_uri":"{jwks}"}}"#);
        assert_eq!(
            d.read(doc("https://idp.example", "https://IDP.example/oauth/keys?v=2").as_bytes()),
            Ok("/oauth/keys?v=2".to_string())
        );
        for (bad, why) in [
            (
                doc("https://idp.example/", "https://idp.example/keys"),
                "issuer",
            ),
            (
                doc("https://evil.example", "https://idp.example/keys"),
                "issuer",
            ),
            (
                doc("https://idp.example", "https://evil.example/keys"),
                "authority",
            ),
            (
                doc(
                    "https://idp.example",
                    "https://idp.example.evil.example/keys",
                ),
                "authority",
            ),
            (doc("https://idp.example", "https://idp.example"), "path"),
            (doc("https://idp.example", "ftp://idp.example/keys"), "http"),
            (
                r#"{"issuer":"https://idp.example"}"#.to_string(),
                "jwks_uri",
            ),
            ("[]".to_string(), "JSON"),
        ] {
            let got = d.read(bad.as_bytes());
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{bad}: {got:?}"
            );
        }
        let mut r = r;
        r.discovery.as_mut().unwrap().jwks_path = Some("/oauth/keys".into());
        assert_eq!(call_path(&r).as_deref(), Some("/oauth/keys"));
    }
}
