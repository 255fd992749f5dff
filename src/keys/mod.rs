//! The trusted issuers as one worker sees them: their key sets (inline, or fetched through a
//! cluster on a schedule, shared with the other workers through shared data, one fetch at a time
//! across workers by a compare-and-swap claim), the requests waiting for a fetch, and the subject
//! tokens already verified with the keys at hand.
use crate::cache::CacheKey;
use crate::config::{ConfigError, KeySource, TrustedIssuer};
use crate::host::{Host, HttpAnswer, HttpCall, LogLevel};
use crate::jwks::KeySet;
use crate::jwt_error::JwtError;
use crate::metrics::Metric;
use crate::policy::Facts;
use crate::token::{self, Binding, JwtCheck, MayAct, Verified};

mod fetch;
mod verified;

use fetch::{encode_attempt, in_progress, read_attempt, split_stamp, RemoteKeys};
use verified::{actor_key, introspected_key, VerifiedTokens};

/// What the engine asks of a token that just verified.
pub struct Reading<'a> {
    /// Its `may_act` names the actor of this request.
    pub may_act: &'a dyn Fn(&MayAct) -> bool,
    /// What its claims allow and tell.
    pub claims: &'a dyn Fn(&str) -> Facts,
}

/// Requests whose wait for keys is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// New keys (or none to wait for): check these again.
    Resume(Vec<u32>),
    /// The fetch failed: these get 503.
    Failed(Vec<u32>),
}

/// What the tick asks of the engine for one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTick {
    /// Waiters whose wait is over.
    Event(KeyEvent),
    /// A fetch of this issuer's keys is due and claimed: send [`Keys::fetch_call`].
    Fetch(usize),
}

/// What checking a subject token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// It verified (now or before, with the same keys).
    Valid(Verified),
    /// It is refused.
    Refused(JwtError),
    /// Its issuer has no keys yet: 503.
    NoKeys,
    /// It names an unknown key: the request waits for a fetch of this issuer's keys.
    Wait(usize),
}

/// What checking a header actor token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorCheck {
    /// A JWT of a trusted issuer that verified.
    Verified,
    /// Not a JWT of a trusted issuer: the STS judges it.
    NotTrusted,
    /// A JWT of a trusted issuer that failed verification: 401.
    Refused(JwtError),
    /// Its issuer has no keys yet: 503.
    NoKeys,
}

/// One trusted issuer's keys as this worker sees them.
struct IssuerState {
    remote: Option<RemoteKeys>,
    keys: Option<KeySet>,
    /// Fetch time of `keys` (ms); 0 for inline keys.
    version: u64,
    /// A token named a key not in the set: fetch early (rate-limited).
    unknown_kid: bool,
    /// The contexts of the requests waiting for a fetch.
    waiters: Vec<u32>,
}

/// The trusted issuers' keys of one worker.
pub struct Keys {
    issuers: Vec<TrustedIssuer>,
    state: Vec<IssuerState>,
    verified: VerifiedTokens,
}

impl Keys {
    /// The issuers' keys: inline sets parsed now, remote ones fetched from the first tick.
    pub fn compile(issuers: &[TrustedIssuer]) -> Result<Keys, ConfigError> {
        if !issuers.is_empty() && !cfg!(feature = "trusted-issuers") {
            return Err(ConfigError::new(
                "trusted_issuers",
                "needs a module built with the trusted-issuers feature (the default build)",
            ));
        }
        let mut state = Vec::with_capacity(issuers.len());
        for (i, t) in issuers.iter().enumerate() {
            state.push(
                issuer_state(t)
                    .map_err(|why| ConfigError::new(format!("trusted_issuers[{i}].jwks"), why))?,
            );
        }
        Ok(Keys {
            issuers: issuers.to_vec(),
            state,
            verified: VerifiedTokens::default(),
        })
    }

    /// Whether any issuer is trusted (otherwise the STS alone judges tokens).
    pub fn enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Whether a remembered verification still holds: same key set, `exp` not passed, an
    /// introspection answer still trusted.
    pub fn still_valid(&self, v: &Verified, now_ms: u64) -> bool {
        let (Some(t), Some(s)) = (self.issuers.get(v.issuer), self.state.get(v.issuer)) else {
            return false;
        };
        s.version == v.version
            && now_ms / 1000 < v.exp.saturating_add(t.leeway_s)
            && v.until_ms.is_none_or(|until| now_ms < until)
    }

    /// The version of `issuer`'s key set in use (its fetch time in ms; 0 for inline or none).
    pub fn version(&self, issuer: usize) -> u64 {
        self.state.get(issuer).map_or(0, |s| s.version)
    }

    /// Remembers a token that issuer `v.issuer` called active (by introspection) for cache key
    /// `key`: under a record key of that issuer's own, so that only a request whose route
    /// introspects at that issuer finds it.
    pub fn remember_introspected(&mut self, key: &CacheKey, v: Verified) {
        self.verified.remember(introspected_key(key, v.issuer), v);
    }

    /// The verification `issuer`'s introspection gave for cache key `key`, if it still holds.
    pub fn introspected(&self, key: &CacheKey, issuer: usize, now_ms: u64) -> Option<Verified> {
        let record = introspected_key(key, issuer);
        self.verified.get(&record, |v| {
            v.issuer == issuer && v.until_ms.is_some() && self.still_valid(v, now_ms)
        })
    }

    /// The signature verification remembered for cache key `key`, if it still holds (an
    /// introspection answer never serves here).
    fn verified(&self, key: &CacheKey, now_ms: u64) -> Option<Verified> {
        self.verified
            .get(key, |v| v.until_ms.is_none() && self.still_valid(v, now_ms))
    }

    /// Checks `subject` (remembered under `key`) for request `ctx`, once per token and key set.
    /// `reading` reads a newly verified token (its `may_act`, its claims). With [`Check::Wait`], the
    /// request `waiter` (its context) waits for a fetch of the issuer's keys; without a
    /// `waiter`, a token naming an unknown key is refused.
    #[allow(clippy::too_many_arguments)]
    pub fn check<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        subject: &str,
        key: &CacheKey,
        reading: &Reading<'_>,
        now: u64,
        waiter: Option<u32>,
    ) -> Check {
        if let Some(v) = self.verified(key, now) {
            return Check::Valid(v);
        }
        let state = &self.state;
        let check = token::verify_jwt(
            subject,
            &self.issuers,
            |i| state.get(i).and_then(|s| s.keys.as_ref()),
            now / 1000,
        );
        match check {
            JwtCheck::Valid {
                issuer,
                exp,
                may_act,
                binding,
            } => {
                token::log_debug(host, ctx, subject, "verified");
                let v = Verified {
                    issuer,
                    version: self.state.get(issuer).map_or(0, |s| s.version),
                    exp,
                    may_act_ok: (reading.may_act)(&may_act),
                    facts: (reading.claims)(subject),
                    until_ms: None,
                    claims: None,
                    binding,
                };
                self.verified.remember(*key, v.clone());
                Check::Valid(v)
            }
            JwtCheck::Invalid(e) => Check::Refused(e),
            // Fetches run every second until the first keys arrive.
            JwtCheck::NoKeys(_) => Check::NoKeys,
            JwtCheck::UnknownKey(i) => {
                let Some(waiter) = waiter.filter(|_| self.may_refetch(host, i, now)) else {
                    return Check::Refused(JwtError::UnknownKey);
                };
                if let Some(state) = self.state.get_mut(i) {
                    state.unknown_kid = true;
                    state.waiters.push(waiter);
                }
                token::log_debug(host, ctx, subject, "waits for fresh signing keys");
                Check::Wait(i)
            }
        }
    }

    /// Checks a header actor token: a JWT naming a trusted issuer is verified like a subject
    /// (once per token and key set, with the keys at hand: an unknown `kid` is refused).
    pub fn check_actor(&mut self, actor: &str, now: u64) -> ActorCheck {
        let key = actor_key(actor);
        if self.verified(&key, now).is_some() {
            return ActorCheck::Verified;
        }
        let (_, iss) = token::unverified_identity(actor);
        if !iss.is_some_and(|iss| self.issuers.iter().any(|t| t.issuer == iss)) {
            return ActorCheck::NotTrusted;
        }
        let state = &self.state;
        let keys = |i: usize| state.get(i).and_then(|s| s.keys.as_ref());
        match token::verify_jwt(actor, &self.issuers, keys, now / 1000) {
            JwtCheck::Valid { issuer, exp, .. } => {
                let version = self.state.get(issuer).map_or(0, |s| s.version);
                let may_act_ok = true;
                self.verified.remember(
                    key,
                    Verified {
                        issuer,
                        version,
                        exp,
                        may_act_ok,
                        facts: Facts::default(),
                        until_ms: None,
                        claims: None,
                        binding: Binding::default(),
                    },
                );
                ActorCheck::Verified
            }
            JwtCheck::Invalid(e) => ActorCheck::Refused(e),
            JwtCheck::UnknownKey(_) => ActorCheck::Refused(JwtError::UnknownKey),
            JwtCheck::NoKeys(_) => ActorCheck::NoKeys,
        }
    }

    /// Forgets request `ctx`, which waited for the keys of `issuer` and ended.
    pub fn leave(&mut self, ctx: u32, issuer: usize) {
        if let Some(s) = self.state.get_mut(issuer) {
            s.waiters.retain(|w| *w != ctx);
        }
    }

    /// Whether a token with an unknown `kid` should wait for a fetch: one is due (rate limit
    /// permitting) or already in progress in some worker.
    fn may_refetch<H: Host>(&self, host: &H, issuer: usize, now: u64) -> bool {
        let Some(state) = self.state.get(issuer) else {
            return false;
        };
        let Some(remote) = &state.remote else {
            return false;
        };
        if remote.fetching.is_some() {
            return true;
        }
        let attempt = read_attempt(host, &remote.attempt_slot);
        in_progress(&attempt, state.version, remote, now)
            || remote.schedule.due(
                now,
                state.keys.as_ref().map(|_| state.version),
                attempt.at,
                attempt.backoff_failures(),
                true,
            )
    }

    /// Takes up the answer to the key fetch of `issuer`.
    pub fn on_answer<H: Host>(&mut self, host: &H, issuer: usize, answer: &HttpAnswer) -> KeyEvent {
        let now = host.now_ms();
        let name = self.issuers.get(issuer).map_or("", |t| t.issuer.as_str());
        let parsed = match answer.status {
            Some(200) if !answer.too_large => {
                KeySet::parse(&answer.body).map_err(|e| e.to_string())
            }
            Some(status) => Err(format!("status {status}")),
            None => Err("unreachable or timed out".to_string()),
        };
        let Some(state) = self.state.get_mut(issuer) else {
            return KeyEvent::Resume(Vec::new());
        };
        let Some(remote) = state.remote.as_mut() else {
            return KeyEvent::Resume(Vec::new());
        };
        let started = remote.fetching.take().map_or(now, |(_, at)| at);
        let parsed = match remote.discovery.as_mut() {
            // The discovery document: on to the key set at the next tick.
            Some(d) if d.jwks_path.is_none() => match answer.status {
                Some(200) if !answer.too_large => match d.read(&answer.body) {
                    Ok(path) => {
                        let msg = format!("discovery of issuer {name}: keys at {path}");
                        host.log(LogLevel::Info, &msg);
                        d.jwks_path = Some(path);
                        // The key set is fetched at the next tick; only a good key set ends a
                        // run of failures, so the backoff keeps doubling while it fails.
                        let failures = read_attempt(host, &remote.attempt_slot).failures;
                        let next = encode_attempt(0, false, failures);
                        let _ = host.shared_set(&remote.attempt_slot, &next, None);
                        return KeyEvent::Resume(Vec::new());
                    }
                    Err(why) => Err(format!("discovery document refused: {why}")),
                },
                Some(status) => Err(format!("discovery document: status {status}")),
                None => Err("discovery document unreachable or timed out".to_string()),
            },
            // A failed key set fetch discovers again (the set may have moved).
            Some(d) if parsed.is_err() => {
                d.jwks_path = None;
                parsed
            }
            _ => parsed,
        };
        match parsed {
            Ok(set) => {
                host.log(
                    LogLevel::Info,
                    &format!(
                        "keys of issuer {name}: {} usable, {} skipped",
                        set.keys.len(),
                        set.skipped
                    ),
                );
                let mut slot = now.to_be_bytes().to_vec();
                slot.extend_from_slice(&answer.body);
                if let Err(e) = host.shared_set(&remote.keys_slot, &slot, None) {
                    host.log(LogLevel::Warn, &format!("sharing keys failed: {}", e.0));
                }
                // A good fetch ends the run of failures.
                let ok = encode_attempt(started, false, 0);
                let _ = host.shared_set(&remote.attempt_slot, &ok, None);
                state.keys = Some(set);
                state.version = now;
                state.unknown_kid = false;
                self.release(issuer, true)
            }
            Err(why) => {
                host.metric(Metric::JwksFetchFailures, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("fetching keys of issuer {name} failed: {why}"),
                );
                let failures = read_attempt(host, &remote.attempt_slot).failures + 1;
                let failed = encode_attempt(started, true, failures);
                let _ = host.shared_set(&remote.attempt_slot, &failed, None);
                self.release(issuer, false)
            }
        }
    }

    /// Periodic work on the root context: takes up keys another worker fetched, and claims the
    /// fetches that are due (the engine sends them, then says [`Keys::fetch_sent`] or
    /// [`Keys::fetch_unsent`]).
    pub fn tick<H: Host>(&mut self, host: &H, now: u64) -> Vec<KeyTick> {
        (0..self.state.len())
            .filter_map(|i| self.tick_issuer(host, i, now))
            .collect()
    }

    /// The fetch call of `issuer`.
    pub fn fetch_call(&self, issuer: usize) -> Option<HttpCall> {
        let remote = self.state.get(issuer)?.remote.as_ref()?;
        Some(remote.call_now())
    }

    /// The fetch of `issuer` went out as callout `call`.
    pub fn fetch_sent(&mut self, issuer: usize, call: u32, now: u64) {
        if let Some(remote) = self.state.get_mut(issuer).and_then(|s| s.remote.as_mut()) {
            remote.fetching = Some((call, now));
        }
    }

    /// The fetch of `issuer` could not be sent: its waiters get 503.
    pub fn fetch_unsent<H: Host>(&mut self, host: &H, issuer: usize, now: u64) -> KeyEvent {
        if let Some(remote) = self.state.get(issuer).and_then(|s| s.remote.as_ref()) {
            let failures = read_attempt(host, &remote.attempt_slot).failures + 1;
            let failed = encode_attempt(now, true, failures);
            let _ = host.shared_set(&remote.attempt_slot, &failed, None);
        }
        self.release(issuer, false)
    }

    fn tick_issuer<H: Host>(&mut self, host: &H, i: usize, now: u64) -> Option<KeyTick> {
        let state = self.state.get_mut(i)?;
        let remote = state.remote.as_mut()?;
        // Keys another worker (or an earlier fetch of ours) shared.
        if let Some((bytes, _)) = host.shared_get(&remote.keys_slot) {
            if let Some((at, body)) = split_stamp(&bytes) {
                if at > state.version {
                    if let Ok(set) = KeySet::parse(body) {
                        state.keys = Some(set);
                        state.version = at;
                        state.unknown_kid = false;
                        return Some(KeyTick::Event(self.release(i, true)));
                    }
                }
            }
        }
        if remote.fetching.is_some() {
            return None;
        }
        let attempt = read_attempt(host, &remote.attempt_slot);
        let fetched = state.keys.as_ref().map(|_| state.version);
        if remote.schedule.due(
            now,
            fetched,
            attempt.at,
            attempt.backoff_failures(),
            state.unknown_kid,
        ) {
            // Claim the attempt for this worker; a lost race means another worker fetches.
            // The claim keeps the count of failures before it, for the backoff after it.
            let claim = encode_attempt(now, false, attempt.failures);
            if host
                .shared_set(&remote.attempt_slot, &claim, attempt.cas)
                .is_err()
            {
                return None;
            }
            state.unknown_kid = false;
            Some(KeyTick::Fetch(i))
        } else {
            // Nothing to fetch (rate limit) or another worker's fetch ended or timed out:
            // waiters get a verdict from the keys at hand.
            if state.waiters.is_empty() || in_progress(&attempt, state.version, remote, now) {
                return None;
            }
            state.unknown_kid = false;
            Some(KeyTick::Event(self.release(i, true)))
        }
    }

    /// Ends the wait of `issuer`'s waiters: to be checked again, or failed.
    fn release(&mut self, issuer: usize, resume: bool) -> KeyEvent {
        let waiters = self
            .state
            .get_mut(issuer)
            .map(|s| std::mem::take(&mut s.waiters))
            .unwrap_or_default();
        if resume {
            KeyEvent::Resume(waiters)
        } else {
            KeyEvent::Failed(waiters)
        }
    }
}

/// The per-worker state of one trusted issuer.
fn issuer_state(t: &TrustedIssuer) -> Result<IssuerState, String> {
    let state = |remote, keys| IssuerState {
        remote,
        keys,
        version: 0,
        unknown_kid: false,
        waiters: Vec::new(),
    };
    match &t.keys {
        KeySource::Inline(doc) => {
            let set = KeySet::from_value(doc).map_err(|e| e.to_string())?;
            Ok(state(None, Some(set)))
        }
        KeySource::Remote(uri) => {
            let remote = RemoteKeys::new(&t.issuer, uri);
            Ok(state(Some(remote), None))
        }
        KeySource::Discovery(uri) => {
            let remote = RemoteKeys::discovered(&t.issuer, uri);
            Ok(state(Some(remote), None))
        }
        KeySource::None => Ok(state(None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config_with;
    use crate::host::FakeHost;
    use crate::jwks::tests::TestKeys;
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: u64 = 1_700_000_000_000;
    const ISS: &str = "https://idp.example";

    fn test_keys() -> &'static TestKeys {
        static KEYS: OnceLock<TestKeys> = OnceLock::new();
        KEYS.get_or_init(TestKeys::new)
    }

    /// The key store of a configuration with these trusted issuers.
    fn keys_of(issuers: serde_json::Value) -> Keys {
        let config = config_with(json!({ "trusted_issuers": issuers }));
        Keys::compile(&config.trusted_issuers).unwrap()
    }

    fn inline() -> Keys {
        keys_of(json!([{ "issuer": ISS, "algorithms": ["RS256"], "jwks": test_keys().jwks() }]))
    }

    fn token(exp_s: u64) -> String {
        let claims = json!({ "iss": ISS, "sub": "alice", "exp": exp_s });
        test_keys().sign("RS256", Some("rsa"), &claims)
    }

    fn check(k: &mut Keys, h: &FakeHost, t: &str, key: CacheKey, now: u64) -> Check {
        let reading = Reading {
            may_act: &|_| true,
            claims: &|_| Facts::default(),
        };
        k.check(h, 1, t, &key, &reading, now, None)
    }

    fn verifications(h: &FakeHost) -> usize {
        let logs = h.logs.borrow();
        logs.iter()
            .filter(|(_, l)| l.ends_with(" verified"))
            .count()
    }

    #[test]
    fn a_token_is_verified_once_per_cache_key_and_never_past_its_exp() {
        let h = FakeHost::at(NOW);
        let mut k = inline();
        let t = token(NOW / 1000 + 600);
        for _ in 0..3 {
            assert!(matches!(
                check(&mut k, &h, &t, [1; 32], NOW),
                Check::Valid(_)
            ));
        }
        assert_eq!(verifications(&h), 1, "remembered under its cache key");
        assert!(matches!(
            check(&mut k, &h, &t, [2; 32], NOW),
            Check::Valid(_)
        ));
        assert_eq!(
            verifications(&h),
            2,
            "another exchange of it verifies on its own"
        );
        let later = NOW + 700_000;
        let expired = check(&mut k, &h, &t, [1; 32], later);
        assert_eq!(
            expired,
            Check::Refused(JwtError::Expired),
            "the record never outlives exp"
        );
    }

    #[test]
    fn trust_by_introspection_serves_only_its_issuer_and_never_a_signature_check() {
        let mut k = keys_of(json!([
            { "issuer": ISS, "algorithms": ["RS256"], "jwks": test_keys().jwks() },
            { "issuer": "https://partner.example", "introspection": { "cluster": "p",
              "authority": "p", "path": "/i", "client_id": "c", "client_secret": "s" } }
        ]));
        let v = Verified {
            issuer: 1,
            version: 0,
            exp: u64::MAX,
            may_act_ok: true,
            facts: Facts::default(),
            until_ms: Some(NOW + 60_000),
            claims: None,
            binding: Binding::default(),
        };
        k.remember_introspected(&[9; 32], v.clone());
        assert_eq!(k.introspected(&[9; 32], 1, NOW), Some(v));
        assert_eq!(k.introspected(&[9; 32], 0, NOW), None, "another issuer");
        assert_eq!(
            k.verified(&[9; 32], NOW),
            None,
            "never a signature's record"
        );
        let h = FakeHost::at(NOW);
        let opaque = check(&mut k, &h, "opaque-token", [9; 32], NOW);
        assert!(matches!(opaque, Check::Refused(_)), "{opaque:?}");
        assert_eq!(
            k.introspected(&[9; 32], 1, NOW + 60_000),
            None,
            "its trust ended"
        );
    }
}
