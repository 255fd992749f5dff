//! The request state machine of one worker, as a dispatcher: host events (request headers, a
//! callout's answer, the root's tick, a request's end) go to the parts that own the state — the
//! route rules, the trusted issuers' [`Keys`], the worker [`Memo`], the shared cache, the
//! [`Flights`] of STS calls — and come back as verdicts. Nothing here touches proxy-wasm: the
//! host is reached through [`Host`].

use crate::actor::{self, Actors};
use crate::cache::{CacheKey, Cached, SharedCache};
use crate::client::{ActorSource, Client};
use crate::config::{Config, ConfigError, Grant, RouteAction};
use crate::consent::Consents;
use crate::credentials;
use crate::endpoint::{self, NoRandomness};
use crate::flights::{self, Exchange, Flights, Job, Waiter};
use crate::host::{Host, HttpAnswer, HttpCall, LogLevel, RequestHeaders};
use crate::keys::Keys;
use crate::memo::Memo;
use crate::metrics::Metric;
use crate::outcomes::Outcomes;
use crate::route::Routes;
use crate::sts::{self, StsFailure};
use crate::token;
use crate::verdict::Verdict;

mod ciba;
mod subject;

/// The per-worker filter state: the compiled configuration and the parts that own the rest.
pub struct Engine {
    config: Config,
    client: Client,
    routes: Routes,
    outcomes: Outcomes,
    cache: SharedCache,
    actors: Actors,
    keys: Keys,
    memo: Memo,
    flights: Flights,
    /// CIBA consents, when `sts.ciba` is configured.
    consents: Option<Consents>,
}

impl Engine {
    /// An engine for a validated configuration; compiling it can still refuse it (a key that
    /// does not parse, a route prefix that could never match).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let client = Client::compile(&config)?;
        let routes = Routes::compile(&config.routes)?;
        let keys = Keys::compile(&config.trusted_issuers)?;
        let cap = config.cache.max_entries as usize;
        let consents = match &config.sts.ciba {
            Some(ciba) => {
                let mut id = [0u8; 8];
                getrandom::getrandom(&mut id)
                    .map_err(|_| ConfigError::new("sts.ciba", "no randomness for a worker id"))?;
                let id = u64::from_be_bytes(id);
                Some(Consents::new(
                    ciba,
                    config.cache.max_entries,
                    config.sts.timeout_ms,
                    id,
                ))
            }
            None => None,
        };
        Ok(Engine {
            consents,
            memo: Memo::new(client.profiles.len(), cap, keys.enabled()),
            cache: SharedCache::new(config.cache.max_entries),
            actors: Actors::new(config.cache),
            outcomes: Outcomes::new(&config),
            flights: Flights::default(),
            config,
            client,
            routes,
            keys,
        })
    }

    /// Decides what to do with a request whose headers just arrived.
    pub fn on_request<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        host.metric(Metric::Requests, 1);
        if let Some(v) = self.notification(host, req) {
            return v;
        }
        let profile = match self.routes.select(req) {
            RouteAction::Bypass => {
                host.metric(Metric::Bypassed, 1);
                return self.outcomes.pass();
            }
            RouteAction::Exchange(p) => p,
        };
        let rules = &self.config.subject_token;
        let subject = match credentials::subject(req, rules) {
            Ok(s) => s,
            Err(why) => return self.outcomes.no_token(host, ctx, why),
        };
        let actor = match self.client.profiles[profile].actor_header() {
            Some(name) => match credentials::actor(req, name, rules.max_bytes) {
                Some(t) => Some(t),
                None => {
                    return self
                        .outcomes
                        .invalid_token(host, "actor token missing or malformed")
                }
            },
            None => None,
        };
        let now = host.now_ms();
        let at = Step::new(ctx, Some(ctx), profile, now);
        self.proceed(host, at, subject.token(), actor.as_deref())
    }

    /// The request from the subject check on: worker memo, verification (with trusted issuers),
    /// shared cache, then join or start an STS call. `actor` is the actor token when the request
    /// has it already (from a header, or just fetched).
    fn proceed<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        actor: Option<&str>,
    ) -> Verdict {
        let (ctx, profile, now) = (at.ctx, at.profile, at.now);
        let p = &self.client.profiles[profile];
        let header_actor = p.actor_header().and(actor);
        if header_actor.is_none() {
            let keys = &self.keys;
            if let Some(hit) = self
                .memo
                .get(profile, subject, now, |v| keys.still_valid(v, now))
            {
                host.metric(Metric::CacheHits, 1);
                token::log_debug(host, ctx, subject, "cache hit (worker)");
                return self.outcomes.cached(host, hit, subject);
            }
        }
        // Both spellings of an ES256 token share one entry.
        let key = p.cache_key(&token::canonical(subject), header_actor);
        let header_actor = header_actor.is_some();
        let verified = if self.keys.enabled() {
            match self.check_subject(host, at, subject, actor, &key) {
                Ok(v) => Some(v),
                Err(verdict) => return verdict,
            }
        } else {
            None
        };
        let ciba = self.client.profiles[profile].grant == Grant::Ciba;
        let consent = match ciba {
            true => match self.consent_key(profile, subject) {
                Some(k) => Some(k),
                None => {
                    return self
                        .outcomes
                        .invalid_token(host, "token names no user for consent")
                }
            },
            false => None,
        };
        let key = consent.as_ref().map_or(key, |c| c.key);
        if let Some((hit, expires_at)) = self.cache.get(host, &key, now) {
            host.metric(Metric::CacheHits, 1);
            token::log_debug(host, ctx, subject, "cache hit");
            let verdict = self.outcomes.cached(host, &hit, subject);
            if !header_actor {
                self.memo
                    .put(profile, subject, hit, expires_at, verified, now);
            }
            return verdict;
        }
        host.metric(Metric::CacheMisses, 1);
        if let Some(consent) = consent {
            let subject_exp = verified
                .map(|v| v.exp)
                .or_else(|| token::unverified_exp(subject));
            return self.ask_consent(host, at, subject, consent, subject_exp);
        }
        if self
            .flights
            .join(&key, Waiter { ctx, resume: None })
            .is_ok()
        {
            host.metric(Metric::Coalesced, 1);
            token::log_debug(host, ctx, subject, "waits on the STS call in flight");
            return Verdict::Pause;
        }

        let source = self.client.profiles[profile]
            .actor
            .as_ref()
            .map(|a| &a.source);
        let (actor_token, actor_until_ms) = match source {
            None => (None, None),
            Some(ActorSource::Header(_)) => (
                actor.map(str::to_string),
                actor::header_actor_until(actor, self.config.cache.expiry_skew_s),
            ),
            Some(ActorSource::ClientCredentials(ai)) => {
                let a = &self.client.actors[*ai];
                match self.actors.token_for(host, a, actor, now) {
                    Some((t, until)) => (Some(t), Some(until)),
                    None => return self.park_for_actor(host, at, subject, *ai),
                }
            }
        };
        let p = &self.client.profiles[profile];
        let client_id = self.client.endpoint.client_id();
        let actor_sub = p.actor_sub(actor_token.as_deref(), client_id);
        let request = p.request(
            &self.client.endpoint,
            subject,
            actor_token.as_deref(),
            now / 1000,
        );
        let call = match self.send(host, ctx, "STS call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        token::log_debug(host, ctx, subject, &format!("cache miss, STS call {call}"));
        let job = Job::Exchange(Exchange {
            profile,
            subject: subject.to_string(),
            subject_exp: verified
                .map(|v| v.exp)
                .or_else(|| token::unverified_exp(subject)),
            actor_token,
            actor_until_ms,
            actor_sub,
            rememberable: !header_actor,
        });
        self.flights.start(
            key,
            call,
            at.carrier,
            now,
            Waiter { ctx, resume: None },
            job,
        );
        Verdict::Pause
    }

    /// Parks a request until the filter's actor token arrives; one call per actor at a time.
    fn park_for_actor<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        actor: usize,
    ) -> Verdict {
        let key = self.client.actors[actor].key;
        let waiter = Waiter {
            ctx: at.ctx,
            resume: Some((at.profile, subject.to_string())),
        };
        let Err(waiter) = self.flights.join(&key, waiter) else {
            return Verdict::Pause;
        };
        let request = self.client.actors[actor].request(&self.client.endpoint, at.now / 1000);
        let call = match self.send(host, at.ctx, "actor token call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        if host.debug_enabled() {
            let msg = format!("ctx={} fetches the actor token, STS call {call}", at.ctx);
            host.log(LogLevel::Debug, &msg);
        }
        let job = Job::Actor { actor };
        self.flights
            .start(key, call, at.carrier, at.now, waiter, job);
        Verdict::Pause
    }

    /// Dispatches a freshly built call to the STS; when it cannot be sent, the request's
    /// verdict is the outage answer.
    fn send<H: Host>(
        &self,
        host: &H,
        ctx: u32,
        what: &str,
        request: Result<HttpCall, NoRandomness>,
    ) -> Result<u32, Verdict> {
        endpoint::send(host, request).map_err(|why| {
            host.log(
                LogLevel::Warn,
                &format!("ctx={ctx} {what} not dispatched: {why}"),
            );
            self.outcomes.failure(host, &UNAVAILABLE)
        })
    }

    /// Handles the answer to callout `call` (an STS call or a key fetch) and returns a verdict
    /// for every request that waited on it.
    pub fn on_http_answer<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        if self.keys.owns(call) {
            let event = self.keys.on_answer(host, call, answer);
            return self.after_keys(host, event, host.now_ms());
        }
        if let Some(consents) = self.consents.as_mut().filter(|c| c.owns(call)) {
            let now = host.now_ms();
            let event = consents.on_answer(host, call, answer, now);
            return event.map_or_else(Vec::new, |e| self.after_consent(host, e, now));
        }
        let Some(landed) = self.flights.land(call) else {
            return Vec::new();
        };
        let now = host.now_ms();
        host.metric(Metric::StsLatencyMs, now.saturating_sub(landed.started_ms));
        match landed.job {
            Job::Exchange(x) => {
                let waiting = landed.waiters.len();
                let v = self.on_exchange_answer(host, call, &landed.key, &x, waiting, answer, now);
                flights::answer_all(landed.waiters, &v)
            }
            Job::Actor { actor } => {
                let a = &self.client.actors[actor];
                match self.actors.on_answer(host, a, call, answer, now) {
                    Ok(token) => {
                        let mut out = Vec::with_capacity(landed.waiters.len());
                        for w in landed.waiters {
                            let Some((profile, subject)) = w.resume else {
                                continue;
                            };
                            let at = Step::new(w.ctx, receiver, profile, now);
                            out.push((w.ctx, self.proceed(host, at, &subject, Some(&token))));
                        }
                        out
                    }
                    Err(failure) => {
                        let v = self.outcomes.actor_failed(host, call, &failure);
                        flights::answer_all(landed.waiters, &v)
                    }
                }
            }
        }
    }

    /// Decides on an exchange's answer: cache it (token or remembered rejection) and say what
    /// its `waiting` requests get.
    #[allow(clippy::too_many_arguments)]
    fn on_exchange_answer<H: Host>(
        &mut self,
        host: &H,
        call: u32,
        key: &CacheKey,
        x: &Exchange,
        waiting: usize,
        answer: &HttpAnswer,
        now: u64,
    ) -> Verdict {
        let judged = self.client.profiles[x.profile].judge(answer, x.actor_sub.as_deref());
        let rules = &self.config.cache;
        let entry = sts::cache_entry(rules, &judged, x.subject_exp, x.actor_until_ms, now);
        let life = entry.as_ref().map_or(0, |(_, until)| until - now);
        if let Some((value, until)) = entry {
            self.keep(host, key, x, value, until);
        }
        match judged {
            Ok(minted) => {
                if host.debug_enabled() {
                    let fp = token::fingerprint(&x.subject);
                    let msg = format!("STS call {call} token={fp} minted, cached for {life} ms");
                    host.log(LogLevel::Debug, &msg);
                }
                self.outcomes.success(&minted.access_token, &x.subject)
            }
            Err(failure) => self.outcomes.exchange_failed(host, call, &failure, waiting),
        }
    }

    /// Writes an answer to the shared cache and, where it may, to the worker memo.
    fn keep<H: Host>(&mut self, host: &H, key: &CacheKey, x: &Exchange, value: Cached, until: u64) {
        self.cache.put(host, key, until, &value);
        if x.rememberable {
            let now = host.now_ms();
            let verified = self.keys.verified(key, now);
            self.memo
                .put(x.profile, &x.subject, value, until, verified, now);
        }
    }

    /// Forgets a request that ended (answered, or the client went away). If its context carried
    /// an STS call others still wait on, the call waits for the root to send it again.
    pub fn on_request_done(&mut self, ctx: u32) {
        self.keys.leave(ctx);
        self.flights.leave(ctx);
        if let Some(c) = self.consents.as_mut() {
            c.leave(ctx);
        }
    }

    /// Periodic work on the root context: sends again the STS calls whose carrier went away,
    /// and looks after the issuers' keys. Returns verdicts for requests that were waiting.
    pub fn on_tick<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let mut out = Vec::new();
        for (key, job) in self.flights.orphans() {
            // Built anew: a fresh client assertion (jti, iat) and the current actor token.
            let request = match &job {
                Job::Exchange(x) => {
                    let p = &self.client.profiles[x.profile];
                    let current = match p.actor.as_ref().map(|a| &a.source) {
                        Some(ActorSource::ClientCredentials(ai)) => {
                            let a = &self.client.actors[*ai];
                            self.actors.current(host, a, now).map(|(t, _)| t)
                        }
                        _ => None,
                    };
                    let actor = current.as_deref().or(x.actor_token.as_deref());
                    p.request(&self.client.endpoint, &x.subject, actor, now / 1000)
                }
                Job::Actor { actor } => {
                    self.client.actors[*actor].request(&self.client.endpoint, now / 1000)
                }
            };
            match endpoint::send(host, request) {
                Ok(call) => self.flights.resent(&key, call),
                Err(why) => {
                    let msg = format!("STS call not dispatched again: {why}");
                    host.log(LogLevel::Warn, &msg);
                    let v = self.outcomes.failure(host, &UNAVAILABLE);
                    let waiters = self.flights.take(&key).map(|l| l.waiters);
                    out.extend(waiters.into_iter().flatten().map(|w| (w.ctx, v.clone())));
                }
            }
        }
        self.memo.sweep(now);
        for event in self.keys.tick(host, now) {
            out.extend(self.after_keys(host, event, now));
        }
        out.extend(self.consent_tick(host, now));
        out
    }
}

/// Where a request stands: its context, the context that would carry a call it starts
/// (`None`: the root), its exchange profile, and the time.
#[derive(Debug, Clone, Copy)]
struct Step {
    ctx: u32,
    carrier: Option<u32>,
    profile: usize,
    now: u64,
}

impl Step {
    fn new(ctx: u32, carrier: Option<u32>, profile: usize, now: u64) -> Self {
        Step {
            ctx,
            carrier,
            profile,
            now,
        }
    }
}

const UNAVAILABLE: StsFailure = StsFailure::Unavailable("token service unavailable");

#[cfg(test)]
mod security_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;
    use crate::refusal::JwtError;
    use crate::verdict::HeaderOp;

    pub(super) const NOW: u64 = 1_700_000_000_000;
    const ATT: &str = "urn:ietf:params:oauth:token-type:access_token";

    pub(super) fn engine(extra: &str) -> Engine {
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"}}{extra}}}"#
        );
        Engine::new(Config::parse(json.as_bytes(), &|_| None).unwrap()).unwrap()
    }

    pub(super) fn ok(token: &str, expires_in: u64) -> HttpAnswer {
        HttpAnswer {
            status: Some(200),
            body: format!(r#"{{"access_token":"{token}","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":{expires_in}}}"#)
                .into_bytes(),
            too_large: false,
        }
    }

    pub(super) fn err(status: u16, code: &str) -> HttpAnswer {
        HttpAnswer {
            status: Some(status),
            body: format!(r#"{{"error":"{code}"}}"#).into_bytes(),
            too_large: false,
        }
    }

    pub(super) fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    pub(super) fn set_value(v: &Verdict, name: &str) -> Option<String> {
        let Verdict::Continue(ops) = v else {
            return None;
        };
        ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set(n, val) if n == name => Some(val.clone()),
            _ => None,
        })
    }

    pub(super) fn status(v: &Verdict) -> u32 {
        match v {
            Verdict::Respond(r) => r.status,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    /// Sends a request with `token` and answers its STS call with `answer`.
    pub(super) fn exchange(
        e: &mut Engine,
        h: &FakeHost,
        ctx: u32,
        token: &str,
        answer: &HttpAnswer,
    ) -> Verdict {
        let auth = bearer(token);
        assert_eq!(
            e.on_request(h, ctx, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
        let mut out = e.on_http_answer(h, None, h.last_call(), answer);
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
    fn hot_tokens_are_served_from_the_worker_memo_until_expiry() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"max_entries":2,"expiry_skew_s":0}"#);
        exchange(&mut e, &h, 1, "hot", &ok("m", 60));
        h.shared.borrow_mut().clear();
        let v = e.on_request(&h, 2, &[("authorization", "Bearer hot")][..]);
        assert_eq!(
            v,
            Verdict::Continue(vec![HeaderOp::Set(
                "authorization".into(),
                "Bearer m".into()
            )])
        );
        h.advance_ms(60_000);
        assert_eq!(
            e.on_request(&h, 3, &[("authorization", "Bearer hot")][..]),
            Verdict::Pause,
            "never served after expiry"
        );
        // bounded: a full table is emptied
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"max_entries":2}"#);
        for (ctx, t) in [(1, "a"), (2, "b"), (3, "c")] {
            exchange(&mut e, &h, ctx, t, &ok("m", 3600));
        }
        assert!(e.memo.len(0) <= 2);
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
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
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
        let out = e.on_http_answer(&h, None, h.last_call(), &err(400, "invalid_grant"));
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
        assert!(
            e.on_http_answer(&h, None, first, &ok("late", 60))
                .is_empty(),
            "lost call is forgotten"
        );
        assert!(e.on_tick(&h).is_empty());
        assert_eq!(h.calls.borrow().len(), 2);
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        // when the last waiter leaves too, nothing is left behind
        e.on_request(&h, 3, &[("authorization", "Bearer u")][..]);
        e.on_request_done(3);
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
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
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
        let cases: Vec<(HttpAnswer, u32)> = vec![
            (err(400, "invalid_request"), 401),
            (err(400, "invalid_grant"), 401),
            (err(400, "invalid_target"), 403),
            (err(400, "invalid_scope"), 403),
            (err(400, "unauthorized_client"), 403),
            (err(401, "invalid_client"), 502),
            (
                HttpAnswer {
                    status: Some(200),
                    body: b"garbage".to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                HttpAnswer {
                    status: Some(200),
                    body: br#"{"access_token":"a","token_type":"N_A","issued_token_type":"x:y"}"#
                        .to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                HttpAnswer {
                    status: Some(500),
                    body: vec![],
                    too_large: false,
                },
                503,
            ),
            (
                HttpAnswer {
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
            &HttpAnswer {
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
            (":authority", "Orders.Example.com"),
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
    fn bypass_matches_only_the_path_the_server_will_serve() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","routes":[{"match":{"path_prefix":"/healthz"},"bypass":true},
                {"match":{"path_prefix":"/orders"},"exchange":{"audience":"orders"}}]"#,
        );
        let mut ctx = 0;
        let mut ask = |path: &str| {
            ctx += 1;
            let token = format!("Bearer t{ctx}");
            e.on_request(
                &h,
                ctx,
                &[(":path", path), ("authorization", token.as_str())][..],
            )
        };
        for path in [
            "/healthz",
            "/healthz/",
            "/healthz/live?x=/..",
            "/healthz/./a",
            "/%68ealthz",
        ] {
            assert_eq!(ask(path), Verdict::Continue(vec![]), "{path} is bypassed");
        }
        for path in [
            "/healthz/../admin",
            "/healthz/%2e%2e/admin",
            "/healthz/.%2E/admin",
            "/healthz/..%2fadmin",
            "/healthz%2F..%2Fadmin",
            "/healthz/..%5cadmin",
            "/healthz\\..\\admin",
            "/healthz/..;/admin",
            "/healthz//../admin",
            "/healthz/%252e%252e/admin",
            "/healthz-admin",
            "/healthzX",
            "/orders/../healthz/../admin",
        ] {
            assert_eq!(
                ask(path),
                Verdict::Pause,
                "{path} must be exchanged, not bypassed"
            );
        }
        // Exchange rules see the same normalized path, on whole segments.
        let calls = h.calls.borrow();
        let orders = calls
            .iter()
            .filter(|c| c.1.body.contains("audience=orders"))
            .count();
        assert_eq!(orders, 0, "no path above resolves under /orders");
        drop(calls);
        assert_eq!(ask("/x/../orders/1"), Verdict::Pause);
        assert!(h
            .calls
            .borrow()
            .last()
            .is_some_and(|c| c.1.body.contains("audience=orders")));
        assert_eq!(ask("/ordersX"), Verdict::Pause);
        assert!(!h
            .calls
            .borrow()
            .last()
            .is_some_and(|c| c.1.body.contains("audience=orders")));
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

    mod issuers {
        use super::*;
        use crate::jwks::tests::TestKeys;
        use serde_json::json;
        use std::sync::OnceLock;

        const ISS: &str = "https://idp.example";

        fn keys() -> &'static TestKeys {
            static KEYS: OnceLock<TestKeys> = OnceLock::new();
            KEYS.get_or_init(TestKeys::new)
        }

        fn token(kid: &str, exp_in_s: u64) -> String {
            let alg = match kid {
                "ec" | "ec2" => "ES256",
                "ed" => "EdDSA",
                _ => "RS256",
            };
            keys().sign(
                alg,
                Some(kid),
                &json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + exp_in_s }),
            )
        }

        fn inline_engine() -> Engine {
            engine(&format!(
                r#","trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256","ES256","EdDSA"],"jwks":{}}}]"#,
                keys().jwks()
            ))
        }

        fn remote_engine() -> Engine {
            engine(&format!(
                r#","trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256","ES256"],"jwks_uri":{{"cluster":"idp","authority":"idp.local","path":"/jwks","refresh_s":60}}}}]"#
            ))
        }

        fn jwks_answer(keys: serde_json::Value) -> HttpAnswer {
            HttpAnswer {
                status: Some(200),
                body: keys.to_string().into_bytes(),
                too_large: false,
            }
        }

        fn ask(e: &mut Engine, h: &FakeHost, ctx: u32, t: &str) -> Verdict {
            let auth = bearer(t);
            e.on_request(h, ctx, &[("authorization", auth.as_str())][..])
        }

        /// Answers the last JWKS fetch.
        fn answer_fetch(
            e: &mut Engine,
            h: &FakeHost,
            keys: serde_json::Value,
        ) -> Vec<(u32, Verdict)> {
            let call = h.calls_to("idp").last().expect("a key fetch").0;
            e.on_http_answer(h, None, call, &jwks_answer(keys))
        }

        /// A remote-keys engine that fetched `keys` at start.
        fn started(h: &FakeHost, keys: serde_json::Value) -> Engine {
            let mut e = remote_engine();
            e.on_tick(h);
            answer_fetch(&mut e, h, keys);
            e
        }

        /// A subject token with these extra claims, signed by the inline RS256 key.
        fn token_with(extra: serde_json::Value) -> String {
            let mut claims = json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + 600 });
            if let (Some(c), Some(x)) = (claims.as_object_mut(), extra.as_object()) {
                c.extend(x.clone());
            }
            keys().sign("RS256", Some("rsa"), &claims)
        }

        fn unsigned(claims: serde_json::Value) -> String {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        }

        /// The other valid spelling of an ES256 token: (r, n - s).
        fn twin(token: &str) -> String {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            let (input, sig) = token.rsplit_once('.').unwrap();
            let sig =
                p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
            let (r, s) = sig.split_scalars();
            let flipped =
                p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(flipped.to_bytes()))
        }

        #[test]
        fn both_spellings_of_an_es256_token_share_one_entry() {
            let h = FakeHost::at(NOW);
            let mut e = inline_engine();
            let t = token("ec", 600);
            let t2 = twin(&t);
            assert_ne!(t, t2);
            assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
            e.on_http_answer(&h, Some(1), h.last_call(), &ok("minted", 3600));
            // The twin verifies too, and is served the same entry: no second exchange.
            assert_eq!(
                set_value(&ask(&mut e, &h, 2, &t2), "authorization").as_deref(),
                Some("Bearer minted")
            );
            assert_eq!(h.calls_to("sts").len(), 1);
            // Likewise a rejection: the twin of a refused token is refused from the cache.
            let r = token("ec", 700);
            ask(&mut e, &h, 3, &r);
            e.on_http_answer(&h, Some(3), h.last_call(), &err(400, "invalid_grant"));
            assert_eq!(status(&ask(&mut e, &h, 4, &twin(&r))), 401);
            assert_eq!(h.calls_to("sts").len(), 2);
            // A signature that is not the twin does not verify.
            let mut forged = t2.clone();
            forged.replace_range(forged.len() - 3.., "AAA");
            assert_eq!(status(&ask(&mut e, &h, 5, &forged)), 401);
        }

        #[test]
        fn may_act_names_who_may_act_and_others_get_403_without_an_sts_call() {
            let issuers = format!(
                r#""trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256"],"jwks":{}}}]"#,
                keys().jwks()
            );
            let header_actor = r#"{"actor":{"source":"header","header":"x-actor"}}"#;
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(
                r#",{issuers},"exchange":{header_actor},"routes":[
                    {{"match":{{"path_prefix":"/lax"}},"exchange":{{"enforce_may_act":false}}}}]"#
            ));
            let ctx = std::cell::Cell::new(0);
            let ask = |e: &mut Engine, h: &FakeHost, path: &str, subject: &str, actor: &str| {
                ctx.set(ctx.get() + 1);
                let auth = bearer(subject);
                let req = [
                    (":path", path),
                    ("authorization", auth.as_str()),
                    ("x-actor", actor),
                ];
                e.on_request(h, ctx.get(), &req[..])
            };
            let svc = unsigned(json!({"sub": "svc-a", "iss": "https://sts.example"}));
            let other = unsigned(json!({"sub": "svc-b", "iss": "https://sts.example"}));
            let named = token_with(json!({"may_act": {"sub": "svc-a"}}));
            let named_iss =
                token_with(json!({"may_act": {"sub": "svc-a", "iss": "https://other"}}));
            let empty = token_with(json!({"may_act": {}}));
            let not_object = token_with(json!({"may_act": "svc-a"}));
            let free = token_with(json!({}));

            assert_eq!(
                ask(&mut e, &h, "/", &named, &svc),
                Verdict::Pause,
                "named actor goes on"
            );
            assert_eq!(
                ask(&mut e, &h, "/", &free, &other),
                Verdict::Pause,
                "no may_act: no limit"
            );
            let before = h.calls.borrow().len();
            for (subject, actor) in [
                (&named, &other),
                (&named_iss, &svc),
                (&empty, &svc),
                (&not_object, &svc),
            ] {
                let v = ask(&mut e, &h, "/", subject, actor);
                assert_eq!(status(&v), 403, "{v:?}");
                // The verified record remembers the decision: a second request is refused too.
                assert_eq!(status(&ask(&mut e, &h, "/", subject, actor)), 403);
            }
            assert_eq!(
                h.calls.borrow().len(),
                before,
                "no STS call for a refused actor"
            );
            assert_eq!(
                ask(&mut e, &h, "/lax", &named, &other),
                Verdict::Pause,
                "check turned off"
            );

            // The filter's own client-credentials actor is named by its client id.
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(
                r#",{issuers},"exchange":{{"actor":{{"source":"client_credentials"}}}}"#
            ));
            let edge = token_with(json!({"may_act": {"sub": "edge"}}));
            let someone = token_with(json!({"may_act": {"sub": "someone-else"}}));
            assert_eq!(ask(&mut e, &h, "/", &edge, ""), Verdict::Pause);
            assert_eq!(status(&ask(&mut e, &h, "/", &someone, "")), 403);
        }

        fn verified_lines(h: &FakeHost) -> usize {
            h.logs
                .borrow()
                .iter()
                .filter(|(_, l)| l.ends_with(" verified"))
                .count()
        }

        #[test]
        fn a_valid_token_is_verified_once_then_exchanged_and_cached() {
            let h = FakeHost::at(NOW);
            let mut e = inline_engine();
            let t = token("rsa", 600);
            assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
            let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
            for ctx in 2..10 {
                assert_ne!(ask(&mut e, &h, ctx, &t), Verdict::Pause);
            }
            assert_eq!(verified_lines(&h), 1, "a hot token is verified once");
            // the verified exp (600 s) capped the lifetime: 600 − 30 skew
            h.advance_ms(570_000);
            assert_eq!(ask(&mut e, &h, 20, &t), Verdict::Pause);
        }

        #[test]
        fn refused_tokens_never_reach_the_sts_and_are_counted_by_reason() {
            let h = FakeHost::at(NOW);
            let mut e = inline_engine();
            let expired = token("rsa", 0);
            h.advance_ms(31_000);
            let v = ask(&mut e, &h, 1, &expired);
            let Verdict::Respond(r) = &v else {
                panic!("{v:?}")
            };
            assert_eq!(r.status, 401);
            assert!(r
                .header("www-authenticate")
                .unwrap()
                .contains("error_description=\"token expired\""));
            let v = ask(&mut e, &h, 2, "opaque-token");
            assert_eq!(status(&v), 401);
            assert!(h.calls.borrow().is_empty());
            assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Expired)), 1);
            assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Malformed)), 1);
            assert_eq!(h.metric_value(Metric::Rejected), 2);
        }

        #[test]
        fn remote_keys_answer_503_until_fetched_then_verify() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            let t = token("rsa", 600);
            let v = ask(&mut e, &h, 1, &t);
            assert_eq!(status(&v), 503);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls_to("idp").len(), 1);
            let fetch = &h.calls_to("idp")[0].1;
            assert_eq!(
                fetch.headers[..3],
                [
                    (":method".to_string(), "GET".to_string()),
                    (":path".into(), "/jwks".into()),
                    (":authority".into(), "idp.local".into())
                ]
            );
            assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
            assert_eq!(ask(&mut e, &h, 2, &t), Verdict::Pause);
            assert_eq!(h.calls_to("sts").len(), 1);
            assert_eq!(h.metric_value(Metric::JwksFetches), 1);
        }

        #[test]
        fn requests_before_the_first_keys_do_not_cause_an_early_refresh() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            e.on_tick(&h);
            assert_eq!(status(&ask(&mut e, &h, 1, &token("rsa", 600))), 503);
            answer_fetch(&mut e, &h, keys().jwks());
            h.advance_ms(10_000);
            e.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                1,
                "no refresh before refresh_s without an unknown kid"
            );
        }

        #[test]
        fn a_failed_first_fetch_is_retried_every_second() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            e.on_tick(&h);
            let call = h.calls_to("idp")[0].0;
            e.on_http_answer(
                &h,
                None,
                call,
                &HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
            );
            assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
            h.advance_ms(900);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 1);
            h.advance_ms(100);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2);
        }

        #[test]
        fn unknown_kid_waits_for_one_early_refresh_then_goes_on() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            let rotated = token("ec", 600);
            assert_eq!(ask(&mut e, &h, 7, &rotated), Verdict::Pause);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls_to("idp").len(), 2, "early refresh");
            let out = answer_fetch(
                &mut e,
                &h,
                json!({ "keys": [keys().rsa_jwk("rsa"), keys().ec_jwk("ec")] }),
            );
            assert_eq!(
                out,
                vec![(7, Verdict::Pause)],
                "verified, now waiting on the STS"
            );
            assert_eq!(h.calls_to("sts").len(), 1);
            let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            assert_eq!(out.len(), 1);
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
        }

        #[test]
        fn a_flood_of_unknown_kids_costs_one_fetch_per_ten_seconds() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            let stranger = token("ec", 600);
            for ctx in 0..200 {
                assert_eq!(ask(&mut e, &h, ctx, &stranger), Verdict::Pause);
            }
            e.on_tick(&h);
            let out = answer_fetch(&mut e, &h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            assert_eq!(out.len(), 200);
            assert!(out.iter().all(|(_, v)| status(v) == 401));
            for ctx in 200..400 {
                assert_eq!(
                    status(&ask(&mut e, &h, ctx, &stranger)),
                    401,
                    "no waiting inside the 10 s"
                );
                e.on_tick(&h);
            }
            assert_eq!(
                h.calls_to("idp").len(),
                2,
                "the start fetch and one early refresh"
            );
            assert_eq!(
                h.metric_value(Metric::InvalidToken(JwtError::UnknownKey)),
                400
            );
            h.advance_ms(10_000);
            assert_eq!(ask(&mut e, &h, 500, &stranger), Verdict::Pause);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 3);
        }

        #[test]
        fn an_idp_that_hangs_or_floods_keeps_the_last_good_keys() {
            for bad in [
                HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
                HttpAnswer {
                    status: Some(200),
                    body: vec![],
                    too_large: true,
                },
                HttpAnswer {
                    status: Some(200),
                    body: b"{\"keys\":".to_vec(),
                    too_large: false,
                },
            ] {
                let h = FakeHost::at(NOW);
                let mut e = started(&h, keys().jwks());
                h.advance_ms(60_000);
                e.on_tick(&h);
                let call = h.calls_to("idp")[1].0;
                e.on_http_answer(&h, None, call, &bad);
                assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
                assert_eq!(
                    ask(&mut e, &h, 1, &token("ec", 600)),
                    Verdict::Pause,
                    "{bad:?}"
                );
            }
        }

        #[test]
        fn a_failed_refresh_keeps_the_last_good_keys() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, keys().jwks());
            h.advance_ms(60_000);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2, "regular refresh");
            let call = h.calls_to("idp")[1].0;
            e.on_http_answer(
                &h,
                None,
                call,
                &HttpAnswer {
                    status: Some(500),
                    body: vec![],
                    too_large: false,
                },
            );
            assert_eq!(
                ask(&mut e, &h, 1, &token("ec", 600)),
                Verdict::Pause,
                "old keys still verify"
            );
            h.advance_ms(9_000);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2);
            h.advance_ms(1_000);
            e.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                3,
                "retried after 10 s, before refresh_s"
            );
        }

        #[test]
        fn rotation_rejects_tokens_of_a_removed_key() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, keys().jwks());
            let old = token("rsa", 600);
            let v = ask(&mut e, &h, 1, &old);
            assert_eq!(v, Verdict::Pause);
            e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            h.advance_ms(60_000);
            e.on_tick(&h);
            answer_fetch(&mut e, &h, json!({ "keys": [keys().ec_jwk("ec")] }));
            assert_eq!(
                status(&ask(&mut e, &h, 2, &old)),
                401,
                "cached exchange is not served for a token whose key is gone"
            );
        }

        #[test]
        fn workers_share_one_fetch_through_shared_data() {
            let h = FakeHost::at(NOW);
            let mut a = remote_engine();
            let mut b = remote_engine();
            a.on_tick(&h);
            b.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                1,
                "the CAS claim lets one worker fetch"
            );
            answer_fetch(&mut a, &h, keys().jwks());
            b.on_tick(&h);
            assert_eq!(
                ask(&mut b, &h, 1, &token("rsa", 600)),
                Verdict::Pause,
                "b took up a's keys"
            );
            assert_eq!(h.calls_to("idp").len(), 1);
        }

        #[test]
        fn a_waiter_that_leaves_is_forgotten() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            assert_eq!(ask(&mut e, &h, 3, &token("ec", 600)), Verdict::Pause);
            e.on_request_done(3);
            e.on_tick(&h);
            assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
        }
    }

    mod delegation {
        use super::*;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;

        fn jwt(claims: serde_json::Value) -> String {
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        }

        fn form_of(call: &HttpCall) -> Vec<(String, String)> {
            form_urlencoded::parse(call.body.as_bytes())
                .into_owned()
                .collect()
        }

        fn field(call: &HttpCall, name: &str) -> Option<String> {
            form_of(call)
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        }

        fn plain(token: &str, expires_in: u64) -> HttpAnswer {
            HttpAnswer {
                status: Some(200),
                body: serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
                    .to_string()
                    .into_bytes(),
                too_large: false,
            }
        }

        #[test]
        fn the_actor_token_is_fetched_once_for_many_requests_and_again_after_expiry() {
            let h = FakeHost::at(NOW);
            let mut e =
                engine(r#","exchange":{"actor":{"source":"client_credentials","scope":"act"}}"#);
            assert_eq!(
                e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]),
                Verdict::Pause
            );
            assert_eq!(
                e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]),
                Verdict::Pause
            );
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 1, "one actor call for two waiting requests");
            assert_eq!(
                field(&calls[0].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
            let actor = jwt(serde_json::json!({"sub": "edge-svc"}));
            let out = e.on_http_answer(&h, Some(1), calls[0].0, &plain(&actor, 120));
            assert_eq!(out, vec![(1, Verdict::Pause), (2, Verdict::Pause)]);
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 3);
            for (_, c) in &calls[1..] {
                assert_eq!(field(c, "actor_token").as_deref(), Some(actor.as_str()));
                assert_eq!(
                    field(c, "actor_token_type").as_deref(),
                    Some(crate::config::ACCESS_TOKEN_TYPE)
                );
            }
            // a new subject later reuses the cached actor token
            e.on_request(&h, 3, &[("authorization", "Bearer u3")][..]);
            assert_eq!(h.calls_to("sts").len(), 4);
            assert_eq!(
                field(&h.calls_to("sts")[3].1, "grant_type").as_deref(),
                Some(crate::client::TOKEN_EXCHANGE_GRANT)
            );
            // after its lifetime (120 − 30 s skew) it is fetched again
            h.advance_ms(90_000);
            e.on_request(&h, 4, &[("authorization", "Bearer u4")][..]);
            assert_eq!(
                field(&h.calls_to("sts")[4].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
        }

        #[test]
        fn a_failed_actor_call_answers_every_parked_request() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &err(400, "invalid_scope"));
            assert_eq!(out.len(), 2);
            assert!(
                out.iter().all(|(_, v)| status(v) == 502),
                "the proxy's own request failed"
            );
        }

        #[test]
        fn an_orphaned_actor_call_is_dispatched_again() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
            e.on_request_done(1);
            e.on_tick(&h);
            assert_eq!(h.calls_to("sts").len(), 2);
            let out = e.on_http_answer(&h, None, h.last_call(), &plain("actor", 600));
            assert_eq!(out, vec![(2, Verdict::Pause)]);
        }

        #[test]
        fn header_actor_is_required_forwarded_to_the_sts_and_stripped() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let v = e.on_request(&h, 1, &[("authorization", "Bearer u")][..]);
            assert_eq!(status(&v), 401);
            assert!(h.calls.borrow().is_empty());
            let v = e.on_request(
                &h,
                2,
                &[("authorization", "Bearer u"), ("x-actor", "a1")][..],
            );
            assert_eq!(v, Verdict::Pause);
            assert_eq!(
                field(&h.calls_to("sts")[0].1, "actor_token").as_deref(),
                Some("a1")
            );
            let out = e.on_http_answer(&h, Some(2), h.last_call(), &ok("minted", 3600));
            let Verdict::Continue(ops) = &out[0].1 else {
                panic!()
            };
            assert!(ops.contains(&HeaderOp::Remove("x-actor".into())));
            // another actor never shares the minted token
            assert_eq!(
                e.on_request(
                    &h,
                    3,
                    &[("authorization", "Bearer u"), ("x-actor", "a2")][..]
                ),
                Verdict::Pause
            );
            assert_eq!(h.calls_to("sts").len(), 2);
        }

        #[test]
        fn expect_act_checks_the_minted_act_claim() {
            let actor = jwt(serde_json::json!({"sub": "agent-7"}));
            for (minted_act, want) in [("agent-7", None), ("someone-else", Some(502))] {
                let h = FakeHost::at(NOW);
                let mut e = engine(
                    r#","exchange":{"actor":{"source":"header","header":"x-actor"},"expect_act":true}"#,
                );
                e.on_request(
                    &h,
                    1,
                    &[("authorization", "Bearer u"), ("x-actor", actor.as_str())][..],
                );
                let minted = jwt(serde_json::json!({"sub": "u", "act": {"sub": minted_act}}));
                let out = e.on_http_answer(&h, Some(1), h.last_call(), &ok(&minted, 3600));
                match want {
                    None => assert!(matches!(out[0].1, Verdict::Continue(_))),
                    Some(code) => assert_eq!(status(&out[0].1), code),
                }
            }
        }

        #[test]
        fn a_header_actors_exp_caps_the_cached_delegation() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let actor = jwt(serde_json::json!({"sub": "agent", "exp": NOW / 1000 + 60}));
            let req = [("authorization", "Bearer u"), ("x-actor", actor.as_str())];
            assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
            e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
            // Within the actor's life (minus the 30 s skew) the entry serves.
            h.advance_ms(20_000);
            assert!(matches!(
                e.on_request(&h, 2, &req[..]),
                Verdict::Continue(_)
            ));
            // Past it, the same (now expired) actor token never gets the cached token.
            h.advance_ms(100_000);
            assert_eq!(e.on_request(&h, 3, &req[..]), Verdict::Pause);
            assert_eq!(h.calls_to("sts").len(), 2);
        }

        #[test]
        fn the_filters_own_actor_token_caps_the_cached_delegation() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            let req = [("authorization", "Bearer u")];
            assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
            // The actor token lives 100 s (70 s in the cache); the delegated one an hour.
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("act-1", 100));
            assert_eq!(out[0].1, Verdict::Pause);
            e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
            h.advance_ms(60_000);
            assert!(matches!(
                e.on_request(&h, 2, &req[..]),
                Verdict::Continue(_)
            ));
            h.advance_ms(15_000);
            assert_eq!(
                e.on_request(&h, 3, &req[..]),
                Verdict::Pause,
                "the delegation made with an expired actor token is not served"
            );
            assert_eq!(
                field(&h.calls_to("sts")[2].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
        }

        #[test]
        fn a_token_minted_without_the_act_check_never_serves_a_route_with_it() {
            let h = FakeHost::at(NOW);
            let mut e = engine(
                r#","exchange":{"actor":{"source":"header","header":"x-actor"}},
                "routes":[{"match":{"path_prefix":"/strict"},"exchange":{"expect_act":true}}]"#,
            );
            let actor = jwt(serde_json::json!({"sub": "agent"}));
            let lax = [
                (":path", "/lax"),
                ("authorization", "Bearer u"),
                ("x-actor", actor.as_str()),
            ];
            assert_eq!(e.on_request(&h, 1, &lax[..]), Verdict::Pause);
            let no_act = jwt(serde_json::json!({"sub": "u"}));
            e.on_http_answer(&h, Some(1), h.last_call(), &ok(&no_act, 3600));
            assert!(matches!(
                e.on_request(&h, 2, &lax[..]),
                Verdict::Continue(_)
            ));
            let strict = [
                (":path", "/strict"),
                ("authorization", "Bearer u"),
                ("x-actor", actor.as_str()),
            ];
            assert_eq!(e.on_request(&h, 3, &strict[..]), Verdict::Pause);
            let out = e.on_http_answer(&h, Some(3), h.last_call(), &ok(&no_act, 3600));
            assert_eq!(status(&out[0].1), 502, "act is checked on the strict route");
        }

        #[test]
        fn a_redispatched_call_signs_a_fresh_assertion() {
            let (pem, _) = crate::assertion::tests::es256_pem();
            let json = r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_auth":"private_key_jwt","private_key":{"pem_env":"KEY"}}}"#;
            let config = Config::parse(json.as_bytes(), &|k| (k == "KEY").then(|| pem.clone()));
            let mut e = Engine::new(config.unwrap()).unwrap();
            let h = FakeHost::at(NOW);
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
            e.on_request_done(1);
            h.advance_ms(100);
            e.on_tick(&h);
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 2);
            let first = field(&calls[0].1, "client_assertion").unwrap();
            let again = field(&calls[1].1, "client_assertion").unwrap();
            let jti = |a: &str| crate::token::tests_support::claim(a, "jti");
            assert_ne!(jti(&first), jti(&again), "a replayed jti would be refused");
            assert_eq!(field(&calls[1].1, "subject_token").as_deref(), Some("t"));
        }

        #[test]
        fn an_orphan_nobody_waits_for_is_not_sent_again() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
            e.on_request_done(1);
            e.on_request_done(2);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls.borrow().len(), 1);
        }

        #[test]
        fn remote_numbers_never_wrap_the_clock() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            let huge = HttpAnswer {
                status: Some(200),
                body: format!(r#"{{"access_token":"forever","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":18446744073709551615}}"#).into_bytes(),
                too_large: false,
            };
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &huge);
            assert!(matches!(out[0].1, Verdict::Continue(_)));
            h.advance_ms(86_400_000);
            assert!(matches!(
                e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
                Verdict::Continue(_)
            ));
            // expires_in as a string of digits is read as seconds.
            let as_text = HttpAnswer {
                status: Some(200),
                body: format!(r#"{{"access_token":"x","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":"60"}}"#).into_bytes(),
                too_large: false,
            };
            e.on_request(&h, 3, &[("authorization", "Bearer v")][..]);
            let out = e.on_http_answer(&h, Some(3), h.last_call(), &as_text);
            assert!(matches!(out[0].1, Verdict::Continue(_)));
            h.advance_ms(31_000);
            assert_eq!(
                e.on_request(&h, 4, &[("authorization", "Bearer v")][..]),
                Verdict::Pause
            );
        }

        #[test]
        fn a_bearer_credential_gone_wrong_is_refused_even_when_missing_ones_pass() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","on_missing_token":"allow""#);
            for v in ["Bearer\ttok", "Bearer,tok", "bearer\u{b}tok"] {
                assert_eq!(
                    status(&e.on_request(&h, 1, &[("authorization", v)][..])),
                    401,
                    "{v:?}"
                );
            }
            assert!(matches!(
                e.on_request(&h, 2, &[("authorization", "Basic dTpw")][..]),
                Verdict::Continue(_)
            ));
            assert!(h.calls.borrow().is_empty());
        }

        #[test]
        fn repeated_token_headers_are_refused_not_picked_from() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let two = [
                ("authorization", "Bearer u"),
                ("x-actor", "a"),
                ("x-actor", "b"),
            ];
            assert_eq!(status(&e.on_request(&h, 1, &two[..])), 401);
            let mut e = engine(r#","subject_token":{"header":"x-subject","prefix":""}"#);
            let two = [("x-subject", "s1"), ("x-subject", "s2")];
            assert_eq!(status(&e.on_request(&h, 2, &two[..])), 401);
            assert_eq!(
                e.on_request(&h, 3, &[("x-subject", "s1")][..]),
                Verdict::Pause
            );
            assert_eq!(h.calls.borrow().len(), 1);
        }

        #[test]
        fn thousands_of_routes_load_and_match_in_order() {
            let routes: Vec<String> = (0..5000)
                .map(|i| {
                    format!(
                        r#"{{"match":{{"path_prefix":"/r{i}"}},"exchange":{{"audience":"a{i}"}}}}"#
                    )
                })
                .collect();
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(r#","routes":[{}]"#, routes.join(",")));
            let v = e.on_request(
                &h,
                1,
                &[(":path", "/r4999/x"), ("authorization", "Bearer t")][..],
            );
            assert_eq!(v, Verdict::Pause);
            assert!(h.calls.borrow()[0].1.body.contains("audience=a4999&"));
            e.on_request(
                &h,
                2,
                &[(":path", "/r49999"), ("authorization", "Bearer t")][..],
            );
            assert!(
                !h.calls.borrow()[1].1.body.contains("audience=a4999&"),
                "whole segments"
            );
        }

        #[test]
        fn jwt_bearer_answers_need_no_issued_token_type() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"grant":"jwt_bearer"}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer a.b.c")][..]);
            assert_eq!(
                field(&h.calls_to("sts")[0].1, "assertion").as_deref(),
                Some("a.b.c")
            );
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("minted", 600));
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
        }
    }
}
