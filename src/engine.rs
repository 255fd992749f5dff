//! The request state machine, per worker: request headers in → a verdict (continue with header
//! edits, pause, or answer); an STS answer in → verdicts for every request that waited on it.
//! Nothing here touches proxy-wasm: the host is reached through [`Host`].

use std::collections::HashMap;

use crate::cache::{self, CacheKey, Cached};
use crate::config::{Config, OnMissingToken, OnStsUnavailable, RouteAction, RouteMatch};
use crate::host::{Host, LogLevel, RequestHeaders};
use crate::metrics::Metric;
use crate::reply::LocalReply;
use crate::sts::{self, StsAnswer, StsFailure, StsRequest};
use crate::token::{self, Extracted};

/// One change to the request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Set the header to this value, replacing any copy.
    Set(String, String),
    /// Remove every copy of the header.
    Remove(String),
}

/// What the proxy should do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply the header changes in order, then route the request.
    Continue(Vec<HeaderOp>),
    /// Hold the request until the engine hands out a verdict for it.
    Pause,
    /// Answer the client with this response.
    Respond(LocalReply),
}

/// An STS call in progress and the requests waiting on it (single flight).
struct Flight {
    request: StsRequest,
    /// The callout's token; `None` when the context that carried it went away and the root has
    /// to dispatch it again.
    call: Option<u32>,
    /// The context whose callout it is (its answer is lost with it); `None` for the root.
    dispatcher: Option<u32>,
    members: Vec<u32>,
    profile: usize,
    subject: String,
    subject_exp: Option<u64>,
    started_ms: u64,
}

/// The per-worker filter state: the configuration and the flights in progress.
pub struct Engine {
    config: Config,
    flights: HashMap<CacheKey, Flight>,
    calls: HashMap<u32, CacheKey>,
    members: HashMap<u32, CacheKey>,
}

impl Engine {
    /// An engine for a validated configuration.
    pub fn new(config: Config) -> Self {
        Engine {
            config,
            flights: HashMap::new(),
            calls: HashMap::new(),
            members: HashMap::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides what to do with a request whose headers just arrived.
    pub fn on_request<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        host.metric(Metric::Requests, 1);
        let profile = match self.route(req) {
            RouteAction::Bypass => {
                host.metric(Metric::Bypassed, 1);
                return Verdict::Continue(self.strip_ops());
            }
            RouteAction::Exchange(p) => p,
        };
        let cfg = &self.config;
        let value = req.header(&cfg.subject_token.header);
        let subject = match token::extract(
            value.as_deref(),
            &cfg.subject_token.prefix,
            cfg.subject_token.max_bytes,
        ) {
            Extracted::Token(t) => t,
            Extracted::Missing => {
                return match cfg.on_missing_token {
                    OnMissingToken::Allow => Verdict::Continue(self.strip_ops()),
                    OnMissingToken::Reject => {
                        host.metric(Metric::Rejected, 1);
                        Verdict::Respond(LocalReply::missing_token(&cfg.realm))
                    }
                };
            }
            Extracted::Malformed(why) => {
                host.metric(Metric::Rejected, 1);
                if host.debug_enabled() {
                    host.log(
                        LogLevel::Debug,
                        &format!("ctx={ctx} malformed token: {why}"),
                    );
                }
                return Verdict::Respond(LocalReply::invalid_token(&cfg.realm, why));
            }
        };

        let key = cfg.profiles[profile].cache_key(subject);
        let slot = cache::slot_name(&key, cfg.cache.max_entries);
        let now = host.now_ms();
        if let Some(hit) = host
            .shared_get(&slot)
            .and_then(|s| cache::lookup(&s, &key, now))
        {
            host.metric(Metric::CacheHits, 1);
            if host.debug_enabled() {
                let fp = token::fingerprint(subject);
                host.log(LogLevel::Debug, &format!("ctx={ctx} token={fp} cache hit"));
            }
            return match hit {
                Cached::Token(minted) => Verdict::Continue(self.success_ops(&minted, subject)),
                Cached::Rejected(failure) => self.failure_verdict(host, &failure),
            };
        }
        host.metric(Metric::CacheMisses, 1);

        if let Some(flight) = self.flights.get_mut(&key) {
            flight.members.push(ctx);
            self.members.insert(ctx, key);
            host.metric(Metric::Coalesced, 1);
            if host.debug_enabled() {
                let fp = token::fingerprint(subject);
                host.log(
                    LogLevel::Debug,
                    &format!("ctx={ctx} token={fp} waits on the STS call in flight"),
                );
            }
            return Verdict::Pause;
        }

        let request = cfg.profiles[profile].request(subject);
        let call = match host.dispatch(&request) {
            Ok(call) => call,
            Err(e) => {
                host.metric(Metric::StsErrors, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("ctx={ctx} STS call not dispatched: {}", e.0),
                );
                return self
                    .failure_verdict(host, &StsFailure::Unavailable("token service unavailable"));
            }
        };
        host.metric(Metric::StsCalls, 1);
        if host.debug_enabled() {
            let fp = token::fingerprint(subject);
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} token={fp} cache miss, STS call {call}"),
            );
        }
        self.flights.insert(
            key,
            Flight {
                request,
                call: Some(call),
                dispatcher: Some(ctx),
                members: vec![ctx],
                profile,
                subject: subject.to_string(),
                subject_exp: token::unverified_exp(subject),
                started_ms: now,
            },
        );
        self.calls.insert(call, key);
        self.members.insert(ctx, key);
        Verdict::Pause
    }

    /// Handles the answer to STS call `call`: caches it and returns a verdict for every request
    /// that waited on it.
    pub fn on_sts_answer<H: Host>(
        &mut self,
        host: &H,
        call: u32,
        answer: &StsAnswer,
    ) -> Vec<(u32, Verdict)> {
        let Some(key) = self.calls.remove(&call) else {
            return Vec::new();
        };
        let Some(flight) = self.flights.remove(&key) else {
            return Vec::new();
        };
        for m in &flight.members {
            self.members.remove(m);
        }
        let now = host.now_ms();
        host.metric(Metric::StsLatencyMs, now.saturating_sub(flight.started_ms));
        let cfg = &self.config;
        let requested = cfg.profiles[flight.profile].requested_token_type.as_deref();
        let slot = cache::slot_name(&key, cfg.cache.max_entries);
        let verdict = match sts::parse_answer(answer, requested) {
            Ok(minted) => {
                let life = cache::token_lifetime_ms(
                    &cfg.cache,
                    minted.expires_in,
                    flight.subject_exp,
                    now,
                );
                if let Some(life) = life {
                    self.store(
                        host,
                        &slot,
                        &key,
                        now + life,
                        &Cached::Token(minted.access_token.clone()),
                    );
                }
                if host.debug_enabled() {
                    let fp = token::fingerprint(&flight.subject);
                    host.log(
                        LogLevel::Debug,
                        &format!(
                            "STS call {call} token={fp} minted, cached for {} ms",
                            life.unwrap_or(0)
                        ),
                    );
                }
                Verdict::Continue(self.success_ops(&minted.access_token, &flight.subject))
            }
            Err(failure) => {
                if let Some(life) =
                    cache::rejection_lifetime_ms(&cfg.cache, flight.subject_exp, now)
                {
                    self.store(
                        host,
                        &slot,
                        &key,
                        now + life,
                        &Cached::Rejected(failure.clone()),
                    );
                }
                if !matches!(
                    failure,
                    StsFailure::SubjectRejected(_) | StsFailure::Forbidden(_)
                ) {
                    host.metric(Metric::StsErrors, 1);
                    host.log(
                        LogLevel::Warn,
                        &format!("STS call {call} failed: {failure:?}"),
                    );
                }
                let v = self.failure_verdict(host, &failure);
                if let Verdict::Respond(r) = &v {
                    if r.status == 401 || r.status == 403 {
                        host.metric(
                            Metric::Rejected,
                            flight.members.len().saturating_sub(1) as u64,
                        );
                    }
                }
                v
            }
        };
        flight
            .members
            .into_iter()
            .map(|m| (m, verdict.clone()))
            .collect()
    }

    /// Forgets a request that ended (answered, or the client went away). If its context carried
    /// an STS call others still wait on, the call is marked for the root to dispatch again.
    pub fn on_request_done(&mut self, ctx: u32) {
        let Some(key) = self.members.remove(&ctx) else {
            return;
        };
        let Some(flight) = self.flights.get_mut(&key) else {
            return;
        };
        flight.members.retain(|m| *m != ctx);
        if flight.dispatcher == Some(ctx) {
            if let Some(call) = flight.call.take() {
                self.calls.remove(&call);
            }
            flight.dispatcher = None;
            if flight.members.is_empty() {
                self.flights.remove(&key);
            }
        }
    }

    /// Periodic work on the root context: dispatches again the calls whose carrier went away.
    /// Returns verdicts for requests whose call could not be dispatched.
    pub fn on_tick<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let orphans: Vec<CacheKey> = self
            .flights
            .iter()
            .filter(|(_, f)| f.call.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for key in orphans {
            let Some(flight) = self.flights.get_mut(&key) else {
                continue;
            };
            match host.dispatch(&flight.request) {
                Ok(call) => {
                    host.metric(Metric::StsCalls, 1);
                    flight.call = Some(call);
                    self.calls.insert(call, key);
                }
                Err(e) => {
                    host.metric(Metric::StsErrors, 1);
                    host.log(
                        LogLevel::Warn,
                        &format!("STS call not dispatched again: {}", e.0),
                    );
                    let members = self
                        .flights
                        .remove(&key)
                        .map(|f| f.members)
                        .unwrap_or_default();
                    let v = self.failure_verdict(
                        host,
                        &StsFailure::Unavailable("token service unavailable"),
                    );
                    for m in members {
                        self.members.remove(&m);
                        out.push((m, v.clone()));
                    }
                }
            }
        }
        out
    }

    /// Whether any call waits for the root to dispatch it again.
    pub fn has_orphans(&self) -> bool {
        self.flights.values().any(|f| f.call.is_none())
    }

    fn store<H: Host>(
        &self,
        host: &H,
        slot: &str,
        key: &CacheKey,
        expires_at_ms: u64,
        value: &Cached,
    ) {
        if let Some(bytes) = cache::encode(key, expires_at_ms, value) {
            if let Err(e) = host.shared_set(slot, &bytes) {
                host.log(LogLevel::Warn, &format!("cache write failed: {}", e.0));
            }
        }
    }

    fn route<R: RequestHeaders + ?Sized>(&self, req: &R) -> RouteAction {
        self.config
            .routes
            .iter()
            .find(|r| matches(&r.matcher, req))
            .map_or(RouteAction::Exchange(0), |r| r.action)
    }

    /// Removes headers a client could use to pass off a token as the filter's.
    fn strip_ops(&self) -> Vec<HeaderOp> {
        let out = &self.config.output;
        let mut ops = Vec::new();
        if out.header != self.config.subject_token.header {
            ops.push(HeaderOp::Remove(out.header.clone()));
        }
        if let Some(h) = &out.original_token_header {
            ops.push(HeaderOp::Remove(h.clone()));
        }
        ops
    }

    fn success_ops(&self, minted: &str, subject: &str) -> Vec<HeaderOp> {
        let out = &self.config.output;
        let mut ops = vec![HeaderOp::Remove(self.config.subject_token.header.clone())];
        ops.extend(self.strip_ops());
        ops.push(HeaderOp::Set(
            out.header.clone(),
            format!("{}{minted}", out.prefix),
        ));
        if let Some(h) = &out.original_token_header {
            ops.push(HeaderOp::Set(h.clone(), subject.to_string()));
        }
        ops
    }

    /// The error table for STS failures, including the fail-open policy. Counts a rejection.
    fn failure_verdict<H: Host>(&self, host: &H, failure: &StsFailure) -> Verdict {
        let realm = &self.config.realm;
        match failure {
            StsFailure::SubjectRejected(_) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::invalid_token(
                    realm,
                    "the token service rejected the token",
                ))
            }
            StsFailure::Forbidden(code) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::forbidden(
                    realm,
                    &format!("the token service refused this exchange: {code}"),
                ))
            }
            StsFailure::InvalidClient => Verdict::Respond(LocalReply::bad_gateway(
                "the token service rejected the proxy's credentials",
            )),
            StsFailure::BadAnswer(why) => Verdict::Respond(LocalReply::bad_gateway(why)),
            StsFailure::Unavailable(why) => match self.config.on_sts_unavailable {
                OnStsUnavailable::Deny => Verdict::Respond(LocalReply::unavailable(why)),
                OnStsUnavailable::Allow => {
                    let mut ops = vec![HeaderOp::Remove(self.config.subject_token.header.clone())];
                    ops.extend(self.strip_ops());
                    Verdict::Continue(ops)
                }
            },
        }
    }
}

/// Whether a request meets every criterion of a route rule.
fn matches<R: RequestHeaders + ?Sized>(m: &RouteMatch, req: &R) -> bool {
    if let Some(want) = &m.authority {
        let Some(got) = req.header(":authority") else {
            return false;
        };
        let got = got.to_ascii_lowercase();
        let host_only = got.rsplit_once(':').map_or(got.as_str(), |(h, _)| h);
        if got != *want && host_only != want {
            return false;
        }
    }
    if let Some(prefix) = &m.path_prefix {
        if !req
            .header(":path")
            .is_some_and(|p| p.starts_with(prefix.as_str()))
        {
            return false;
        }
    }
    if !m.methods.is_empty() {
        let Some(method) = req.header(":method") else {
            return false;
        };
        if !m.methods.contains(&method) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    const NOW: u64 = 1_700_000_000_000;
    const ATT: &str = "urn:ietf:params:oauth:token-type:access_token";

    fn engine(extra: &str) -> Engine {
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"}}{extra}}}"#
        );
        Engine::new(Config::parse(json.as_bytes(), &|_| None).unwrap())
    }

    fn ok(token: &str, expires_in: u64) -> StsAnswer {
        StsAnswer {
            status: Some(200),
            body: format!(r#"{{"access_token":"{token}","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":{expires_in}}}"#)
                .into_bytes(),
            too_large: false,
        }
    }

    fn err(status: u16, code: &str) -> StsAnswer {
        StsAnswer {
            status: Some(status),
            body: format!(r#"{{"error":"{code}"}}"#).into_bytes(),
            too_large: false,
        }
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn set_value(v: &Verdict, name: &str) -> Option<String> {
        let Verdict::Continue(ops) = v else {
            return None;
        };
        ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set(n, val) if n == name => Some(val.clone()),
            _ => None,
        })
    }

    fn status(v: &Verdict) -> u32 {
        match v {
            Verdict::Respond(r) => r.status,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    /// Sends a request with `token` and answers its STS call with `answer`.
    fn exchange(
        e: &mut Engine,
        h: &FakeHost,
        ctx: u32,
        token: &str,
        answer: &StsAnswer,
    ) -> Verdict {
        let auth = bearer(token);
        assert_eq!(
            e.on_request(h, ctx, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
        let mut out = e.on_sts_answer(h, h.last_call(), answer);
        assert_eq!(out.len(), 1);
        out.remove(0).1
    }

    #[test]
    fn miss_then_hit_rewrites_authorization_without_pausing_the_second_time() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some("Bearer minted")
        );
        assert_eq!(h.calls.borrow().len(), 1);
        let v = e.on_request(&h, 2, &[("authorization", "Bearer caller")][..]);
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some("Bearer minted")
        );
        assert_eq!(h.calls.borrow().len(), 1, "served from cache");
        assert_eq!(h.metric_value(Metric::Requests), 2);
        assert_eq!(h.metric_value(Metric::CacheHits), 1);
        assert_eq!(h.metric_value(Metric::CacheMisses), 1);
        assert_eq!(h.metric_value(Metric::StsCalls), 1);
    }

    #[test]
    fn the_callers_token_never_survives_a_success() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","output":{"header":"x-exchanged","prefix":"","original_token_header":"x-orig"}"#,
        );
        let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
        let Verdict::Continue(ops) = &v else { panic!() };
        assert_eq!(
            ops,
            &vec![
                HeaderOp::Remove("authorization".into()),
                HeaderOp::Remove("x-exchanged".into()),
                HeaderOp::Remove("x-orig".into()),
                HeaderOp::Set("x-exchanged".into(), "minted".into()),
                HeaderOp::Set("x-orig".into(), "caller".into()),
            ]
        );
    }

    #[test]
    fn concurrent_misses_on_one_token_make_one_call() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        for ctx in 1..=20 {
            assert_eq!(
                e.on_request(&h, ctx, &[("authorization", "Bearer same")][..]),
                Verdict::Pause
            );
        }
        assert_eq!(h.calls.borrow().len(), 1);
        assert_eq!(h.metric_value(Metric::Coalesced), 19);
        let out = e.on_sts_answer(&h, h.last_call(), &ok("minted", 3600));
        let mut ctxs: Vec<u32> = out.iter().map(|(c, _)| *c).collect();
        ctxs.sort_unstable();
        assert_eq!(ctxs, (1..=20).collect::<Vec<_>>());
        assert!(out
            .iter()
            .all(|(_, v)| set_value(v, "authorization").as_deref() == Some("Bearer minted")));
        // a different token is a different flight
        assert_eq!(
            e.on_request(&h, 30, &[("authorization", "Bearer other")][..]),
            Verdict::Pause
        );
        assert_eq!(h.calls.borrow().len(), 2);
    }

    #[test]
    fn coalesced_failures_reach_every_waiter() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"negative_ttl_s":0}"#);
        for ctx in 1..=3 {
            e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..]);
        }
        let out = e.on_sts_answer(&h, h.last_call(), &err(400, "invalid_grant"));
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|(_, v)| status(v) == 401));
        assert_eq!(h.metric_value(Metric::Rejected), 3);
        assert_eq!(h.metric_value(Metric::StsErrors), 0);
    }

    #[test]
    fn a_call_lost_with_its_context_is_dispatched_again_by_the_root() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
        let first = h.last_call();
        e.on_request_done(1);
        assert!(e.has_orphans());
        assert!(
            e.on_sts_answer(&h, first, &ok("late", 60)).is_empty(),
            "lost call is forgotten"
        );
        assert!(e.on_tick(&h).is_empty());
        assert!(!e.has_orphans());
        assert_eq!(h.calls.borrow().len(), 2);
        let out = e.on_sts_answer(&h, h.last_call(), &ok("minted", 3600));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        // when the last waiter leaves too, nothing is left behind
        e.on_request(&h, 3, &[("authorization", "Bearer u")][..]);
        e.on_request_done(3);
        assert!(!e.has_orphans());
        assert!(e.on_tick(&h).is_empty());
        assert_eq!(h.calls.borrow().len(), 3);
    }

    #[test]
    fn a_waiter_that_leaves_gets_no_verdict() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
        e.on_request_done(2);
        let out = e.on_sts_answer(&h, h.last_call(), &ok("minted", 3600));
        assert_eq!(out.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn missing_token_is_rejected_or_passed_on_by_policy() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = e.on_request(&h, 1, &[(":path", "/")][..]);
        let Verdict::Respond(r) = &v else { panic!() };
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"token-exchange\"")
        );
        let mut e = engine(r#","on_missing_token":"allow""#);
        assert_eq!(
            e.on_request(&h, 1, &[(":path", "/")][..]),
            Verdict::Continue(vec![])
        );
        assert!(h.calls.borrow().is_empty());
    }

    #[test]
    fn malformed_and_oversized_tokens_never_reach_the_sts() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","subject_token":{"max_bytes":16}"#);
        for v in [
            "Bearer ",
            "Bearer a b",
            &format!("Bearer {}", "x".repeat(17)),
        ] {
            let verdict = e.on_request(&h, 1, &[("authorization", v)][..]);
            assert_eq!(status(&verdict), 401, "{v}");
            let Verdict::Respond(r) = verdict else {
                unreachable!()
            };
            assert!(r
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token"));
        }
        assert!(h.calls.borrow().is_empty());
        assert_eq!(h.metric_value(Metric::Rejected), 3);
    }

    #[test]
    fn every_sts_failure_answers_per_the_error_table() {
        let cases: Vec<(StsAnswer, u32)> = vec![
            (err(400, "invalid_request"), 401),
            (err(400, "invalid_grant"), 401),
            (err(400, "invalid_target"), 403),
            (err(400, "invalid_scope"), 403),
            (err(400, "unauthorized_client"), 403),
            (err(401, "invalid_client"), 502),
            (
                StsAnswer {
                    status: Some(200),
                    body: b"garbage".to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                StsAnswer {
                    status: Some(200),
                    body: br#"{"access_token":"a","token_type":"N_A","issued_token_type":"x:y"}"#
                        .to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                StsAnswer {
                    status: Some(500),
                    body: vec![],
                    too_large: false,
                },
                503,
            ),
            (
                StsAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
                503,
            ),
        ];
        for (i, (answer, want)) in cases.into_iter().enumerate() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            let v = exchange(&mut e, &h, 1, &format!("t{i}"), &answer);
            assert_eq!(status(&v), want, "{answer:?}");
            let Verdict::Respond(r) = &v else {
                unreachable!()
            };
            assert!(!r.body.contains(&format!("t{i}\"")), "no token in the body");
            if want == 503 {
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            let errors = h.metric_value(Metric::StsErrors);
            assert_eq!(errors, u64::from(want >= 502), "{answer:?}");
        }
    }

    #[test]
    fn undispatchable_call_is_unavailable() {
        let h = FakeHost::at(NOW);
        h.refuse_dispatch.set(true);
        let mut e = engine("");
        let v = e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        assert_eq!(status(&v), 503);
        assert_eq!(h.metric_value(Metric::StsErrors), 1);
    }

    #[test]
    fn fail_open_strips_the_token_and_passes_on() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","on_sts_unavailable":"allow""#);
        let v = exchange(
            &mut e,
            &h,
            1,
            "t",
            &StsAnswer {
                status: None,
                body: vec![],
                too_large: false,
            },
        );
        assert_eq!(
            v,
            Verdict::Continue(vec![HeaderOp::Remove("authorization".into())])
        );
        // fail-open is only for outages: a rejection still answers
        let v = exchange(&mut e, &h, 2, "u", &err(400, "invalid_grant"));
        assert_eq!(status(&v), 401);
    }

    #[test]
    fn rejections_are_remembered_for_negative_ttl() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"negative_ttl_s":5}"#);
        assert_eq!(
            status(&exchange(&mut e, &h, 1, "bad", &err(400, "invalid_grant"))),
            401
        );
        for ctx in 2..50 {
            assert_eq!(
                status(&e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..])),
                401
            );
        }
        assert_eq!(h.calls.borrow().len(), 1);
        h.advance_ms(5_000);
        assert_eq!(
            e.on_request(&h, 99, &[("authorization", "Bearer bad")][..]),
            Verdict::Pause
        );
        assert_eq!(h.calls.borrow().len(), 2);
        // outages are not remembered
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        exchange(&mut e, &h, 1, "t", &err(503, "x"));
        assert_eq!(
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn entries_expire_and_are_exchanged_again() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"expiry_skew_s":10}"#);
        exchange(&mut e, &h, 1, "t", &ok("m1", 60));
        h.advance_ms(49_999);
        assert_eq!(
            set_value(
                &e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
                "authorization"
            )
            .as_deref(),
            Some("Bearer m1")
        );
        h.advance_ms(1);
        let v = exchange(&mut e, &h, 3, "t", &ok("m2", 60));
        assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m2"));
        assert_eq!(h.calls.borrow().len(), 2);
    }

    #[test]
    fn a_short_lived_answer_is_used_but_not_cached() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = exchange(&mut e, &h, 1, "t", &ok("m1", 30));
        assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m1"));
        assert!(h.shared.borrow().is_empty());
        assert_eq!(
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn routes_pick_audiences_and_bypass() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","exchange":{"audience":"default"},"routes":[
                {"match":{"path_prefix":"/healthz"},"bypass":true},
                {"match":{"authority":"orders.example.com","methods":["GET"]},"exchange":{"audience":["orders"]}}]"#,
        );
        let health = e.on_request(
            &h,
            1,
            &[(":path", "/healthz"), ("authorization", "Bearer t")][..],
        );
        assert_eq!(health, Verdict::Continue(vec![]));
        assert_eq!(h.metric_value(Metric::Bypassed), 1);
        let req = [
            (":path", "/o"),
            (":method", "GET"),
            (":authority", "Orders.example.com:8080"),
            ("authorization", "Bearer t"),
        ];
        e.on_request(&h, 2, &req[..]);
        let req = [
            (":path", "/o"),
            (":method", "POST"),
            (":authority", "orders.example.com"),
            ("authorization", "Bearer t"),
        ];
        e.on_request(&h, 3, &req[..]);
        let calls = h.calls.borrow();
        assert_eq!(
            calls.len(),
            2,
            "different audiences never share a flight or an entry"
        );
        assert!(calls[0].1.body.contains("audience=orders&"));
        assert!(calls[1].1.body.contains("audience=default&"));
    }

    #[test]
    fn subject_exp_caps_the_cache_lifetime() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let exp = NOW / 1000 + 100;
        let jwt = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
        );
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"expiry_skew_s":0}"#);
        exchange(&mut e, &h, 1, &jwt, &ok("m", 3600));
        h.advance_ms(99_999);
        let auth = bearer(&jwt);
        assert_ne!(
            e.on_request(&h, 2, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
        h.advance_ms(1);
        assert_eq!(
            e.on_request(&h, 3, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn logs_carry_hashes_never_tokens_or_secrets() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        exchange(
            &mut e,
            &h,
            7,
            "the-callers-token",
            &ok("the-minted-token", 3600),
        );
        e.on_request(&h, 8, &[("authorization", "Bearer the-callers-token")][..]);
        exchange(&mut e, &h, 9, "another", &err(401, "invalid_client"));
        let logs = h.logs.borrow();
        assert!(logs.len() >= 4);
        let fp = token::fingerprint("the-callers-token");
        assert!(logs
            .iter()
            .any(|(_, l)| l.contains("ctx=7") && l.contains(&fp)));
        for (_, l) in logs.iter() {
            for secret in ["the-callers-token", "the-minted-token", "another", "pw"] {
                assert!(!l.contains(secret), "{l}");
            }
        }
    }
}
