//! The request state machine of one worker, as a dispatcher: host events (request headers, a
//! callout's answer, the root's tick, a request's end) go to the stage a request is at — trust
//! ([`Trust`]: key stores, introspection), authorize (the policy), exchange ([`Exchanges`]:
//! cache, memo, flights, actor tokens, freshness), consent ([`Consent`]) — and what a stage says
//! (go on, stop with a verdict, wait) moves the request on, answers it, or parks it as its
//! [`Request`] record. Nothing here touches proxy-wasm: the host is reached through [`Host`].

use std::collections::HashMap;

use crate::caller::TraceContext;
use crate::config::{Config, ConfigError};
use crate::consent::ConsentEvent;
use crate::flights::Job;
use crate::host::{Host, HttpAnswer, RequestHeaders};
use crate::keys::KeyEvent;
use crate::metrics::Metric;
use crate::sts::StsFailure;
use crate::token::Verified;
use crate::verdict::{to_each, Verdict};
use binding::BindingCheck;
use calls::{Calls, Owner};
use consent::Consent;
use edge::Edge;
use exchange::Exchanges;
use request::{At, Next, Parked, Request, Wait};
use setup::Setup;
use trust::Trust;

mod authorize;
mod binding;
mod calls;
mod consent;
mod edge;
mod exchange;
mod exchanged;
mod extract;
mod refresh_evict;
mod request;
mod setup;
mod trust;

/// The per-worker filter state: the compiled configuration, the stages that own the parts,
/// the call table and the parked requests.
pub struct Engine {
    setup: Setup,
    /// Every callout in the air, and whose answer it is.
    calls: Calls,
    /// Each parked request, and where it waits.
    parked: HashMap<u32, Parked>,
    trust: Trust,
    exchange: Exchanges,
    /// When `sts.ciba` is configured.
    consent: Option<Consent>,
    /// What the engine tells at its edge: RFC 9728 metadata, each decision in filter state.
    edge: Edge,
    /// Sender-constrained tokens: DPoP proofs and certificate bindings.
    binding: BindingCheck,
}

impl Engine {
    /// An engine for a validated configuration; compiling it can still refuse it (a key that
    /// does not parse, a route prefix that could never match).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let trust = Trust::compile(&config)?;
        let consent = Consent::compile(&config)?;
        let edge = Edge::new(&config);
        let binding = BindingCheck::new(&config);
        let setup = Setup::compile(config)?;
        let profiles = setup.client.profiles.len();
        let exchange = Exchanges::new(&setup.config, profiles, trust.keys.enabled());
        Ok(Engine {
            setup,
            calls: Calls::default(),
            parked: HashMap::new(),
            trust,
            exchange,
            consent,
            edge,
            binding,
        })
    }

    /// The token services the per-service counters are kept for: none without
    /// `token_services`, else `sts` and each named one, in service order.
    pub fn counted_services(&self) -> Vec<String> {
        self.setup.counted_services()
    }

    /// Work at start, on the root context before any request: the consents' claim slots exist
    /// (so that claiming one is always a compare-and-swap).
    pub fn on_start<H: Host>(&self, host: &H) {
        if let Some(consent) = &self.consent {
            consent.prepare(host);
        }
    }

    /// Decides what to do with a request whose headers just arrived.
    pub fn on_request<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        host.metric(Metric::Requests, 1);
        let ping = self.consent.as_ref();
        if let Some(v) = ping.and_then(|c| c.notification(&self.setup, host, req)) {
            return v;
        }
        if !self.edge.enabled() {
            return self.route(host, ctx, req);
        }
        if let Some(v) = self.edge.answer(req) {
            return v;
        }
        let v = self.route(host, ctx, req);
        self.edge.at_start((ctx, host.now_ms()), req, v)
    }

    /// The route and extract stages of a request, then the worker memo or trust.
    fn route<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        let c = match extract::credentials(&self.setup, host, (ctx, self.binding.algs()), req) {
            Ok(credentials) => credentials,
            Err((verdict, path)) => return self.edge.early(ctx, path, verdict),
        };
        self.edge.start(&self.setup, &c);
        let at = At {
            carrier: Some(ctx),
            now: host.now_ms(),
        };
        let (keys, edge) = (&self.trust.keys, &mut self.edge);
        let still_valid = |v: &Verified| keys.still_valid(v, at.now);
        let mut identify = |v: &Verified, token: &str| edge.identify(ctx, v, token);
        let checks = (
            &still_valid as &dyn Fn(&Verified) -> bool,
            &mut identify as _,
        );
        let answer = (self.exchange).memo_answer(&self.setup, host, at, c, checks);
        let c = match answer {
            Ok(verdict) => return verdict,
            Err(c) => c,
        };
        let peer = (self.binding.reads_certificates()).then(|| req.peer_certificate_digest());
        let req = Request::new(&self.setup, c, (peer.flatten(), TraceContext::of(req)));
        self.trust_stage(host, at, req, true)
    }

    /// The trust stage, then on (with `may_wait`, a token naming an unknown key may wait for
    /// a fetch of its issuer's keys).
    fn trust_stage<H: Host>(&mut self, host: &H, at: At, req: Request, may_wait: bool) -> Verdict {
        let ctx = (&self.setup, &mut self.calls);
        let next = self.trust.check(ctx, host, at, &req, may_wait);
        self.trusted(host, at, req, next)
    }

    /// What the trust stage said of `req`: on to the authorize stage with its verification,
    /// its verdict, or a wait.
    fn trusted<H: Host>(
        &mut self,
        host: &H,
        at: At,
        mut req: Request,
        next: Next<Option<Verified>>,
    ) -> Verdict {
        match next {
            Next::Go(verified) => {
                if let Some(v) = &verified {
                    self.edge.identify(req.ctx, v, req.token());
                }
                req.verified = verified;
                self.authorize_stage(host, at, req)
            }
            Next::Stop(verdict) => verdict,
            Next::Park(wait) => self.park(req, wait, at.now),
        }
    }

    /// The binding and authorize stages, then the exchange.
    fn authorize_stage<H: Host>(&mut self, host: &H, at: At, req: Request) -> Verdict {
        let next = match self.binding.check(&self.setup, host, &req) {
            Next::Go(()) => authorize::authorize(&self.setup, host, &req),
            refused => refused,
        };
        match next {
            Next::Go(()) => self.exchange_stage(host, at, req, None),
            Next::Stop(verdict) => verdict,
            Next::Park(wait) => self.park(req, wait, at.now),
        }
    }

    /// The exchange stage (a ciba route's key is its user's consent's), then the consent.
    fn exchange_stage<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: Request,
        fetched_actor: Option<&str>,
    ) -> Verdict {
        let consent = match consent::needed(&self.setup, host, &req) {
            Ok(consent) => consent,
            Err(verdict) => return verdict,
        };
        let key = consent.as_ref().map_or((req.key, false), |c| (c.key, true));
        let ctx = (&self.setup, &mut self.calls);
        let next = match self.exchange.run(ctx, host, at, &req, key, fetched_actor) {
            // A miss on a ciba route: the user's consent.
            Next::Go(()) => match (consent, self.consent.as_mut()) {
                (Some(c), Some(stage)) => stage.ask(host, at, &req, c),
                _ => Next::Go(()),
            },
            next => next,
        };
        match next {
            Next::Stop(verdict) => verdict,
            Next::Park(wait) => self.park(req, wait, at.now),
            // Nothing goes on past the consent stage.
            Next::Go(()) => self.setup.outcomes.failure(host, &UNAVAILABLE),
        }
    }

    /// Handles the answer to callout `call` and returns a verdict for every request that waited
    /// on it.
    pub fn on_http_answer<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let out = self.answered(host, receiver, call, answer);
        self.edge.later(out, host.now_ms())
    }

    fn answered<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let at = At {
            carrier: receiver,
            now,
        };
        let landed = match self.calls.land(host, call) {
            Some(Owner::Keys(issuer)) => {
                let event = self.trust.keys.on_answer(host, issuer, answer);
                return self.after_keys(host, event, now);
            }
            Some(Owner::Consent(key)) => {
                let stage = self.consent.as_mut();
                let event = stage.and_then(|c| c.on_answer(host, (key, call), answer, now));
                return event.map_or_else(Vec::new, |e| self.after_consent(host, e, now));
            }
            Some(Owner::Introspection(key)) => {
                let Some(landed) = self.trust.flights.land(&key, call) else {
                    return Vec::new();
                };
                let requests = self.resume(&landed.waiters);
                let s = &self.setup;
                let judged = self
                    .trust
                    .introspected_all(s, host, landed, answer, requests);
                let mut out = Vec::with_capacity(judged.len());
                for (req, next) in judged {
                    let ctx = req.ctx;
                    out.push((ctx, self.trusted(host, at, req, next)));
                }
                return out;
            }
            Some(Owner::Flight(key)) => self.exchange.flights.land(&key, call),
            None => None,
        };
        let Some(landed) = landed else {
            return Vec::new();
        };
        match landed.job {
            Job::Exchange(x) => {
                let ctx = (&self.setup, &mut self.calls);
                let flight = ((landed.key, *x), landed.waiters);
                let answered = self
                    .exchange
                    .answered(ctx, host, (receiver, call), flight, answer);
                let Some((waiters, v)) = answered else {
                    return Vec::new();
                };
                self.resume(&waiters);
                to_each(waiters.iter().copied(), &v)
            }
            Job::Actor { actor } => {
                let requests = self.resume(&landed.waiters);
                let s = &self.setup;
                match self
                    .exchange
                    .actor_answered(s, host, (call, actor), answer, now)
                {
                    Ok(token) => {
                        let mut out = Vec::with_capacity(requests.len());
                        for req in requests {
                            let ctx = req.ctx;
                            out.push((ctx, self.exchange_stage(host, at, req, Some(&token))));
                        }
                        out
                    }
                    Err(v) => to_each(requests.iter().map(|r| r.ctx), &v),
                }
            }
            Job::Introspect { .. } => Vec::new(),
        }
    }

    /// Requests whose wait for keys is over: at the trust stage again with the keys now at
    /// hand (a token still naming an unknown key is refused now: it does not wait again), or
    /// 503.
    fn after_keys<H: Host>(&mut self, host: &H, event: KeyEvent, now: u64) -> Vec<(u32, Verdict)> {
        match event {
            KeyEvent::Failed(waiters) => {
                self.resume(&waiters);
                let v = self.setup.outcomes.no_keys(true);
                to_each(waiters.iter().copied(), &v)
            }
            KeyEvent::Resume(waiters) => {
                let mut out = Vec::with_capacity(waiters.len());
                for ctx in waiters {
                    let Some(parked) = self.parked.remove(&ctx) else {
                        continue;
                    };
                    parked.log_resumed(host, now);
                    let at = At { carrier: None, now };
                    out.push((ctx, self.trust_stage(host, at, parked.request, false)));
                }
                out
            }
        }
    }

    /// What the requests that waited for a consent get.
    fn after_consent<H: Host>(
        &mut self,
        host: &H,
        event: ConsentEvent,
        now: u64,
    ) -> Vec<(u32, Verdict)> {
        let requests = self.resume(&event.waiting());
        let retry = self.consent.as_ref().map_or(1, Consent::retry_after_s);
        let s = &self.setup;
        self.exchange
            .consented(s, host, event, &requests, (retry, now))
    }

    /// Forgets a request that ended (answered, or the client went away). If its context carried
    /// a call others still wait on, the call waits for the root to send it again.
    pub fn on_request_done(&mut self, ctx: u32) {
        self.edge.forget(ctx);
        self.exchange.freshness.take(ctx);
        match self.parked.remove(&ctx).map(|p| p.wait) {
            Some(Wait::Keys(issuer)) => self.trust.keys.leave(ctx, issuer),
            Some(Wait::Flight(key) | Wait::Actor(key)) => self.exchange.flights.leave(ctx, &key),
            Some(Wait::Introspection(key)) => self.trust.flights.leave(ctx, &key),
            Some(Wait::Consent(key)) => {
                if let Some(c) = self.consent.as_mut() {
                    c.leave(ctx, &key);
                }
            }
            None => {}
        }
        let mut lost = self.exchange.flights.carrier_gone(ctx);
        lost.extend(self.trust.flights.carrier_gone(ctx));
        self.calls.forget(lost);
    }

    /// Periodic work on the root context: sends again the calls whose carrier went away, and
    /// looks after the memo, the issuers' keys and the consents. Returns verdicts for requests
    /// that were waiting.
    pub fn on_tick<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let ctx = (&self.setup, &mut self.calls);
        let mut failed = self.exchange.send_orphans(ctx, host, now);
        let ctx = (&self.setup, &mut self.calls);
        failed.extend(self.trust.send_orphans(ctx, host, now));
        let mut out = Vec::new();
        for (waiters, v) in failed {
            self.resume(&waiters);
            out.extend(to_each(waiters.iter().copied(), &v));
        }
        self.exchange.tick(host, now);
        for event in self.trust.tick(&mut self.calls, host, now) {
            out.extend(self.after_keys(host, event, now));
        }
        let ctx = (&self.setup, &mut self.calls);
        let events = self.consent.as_mut().map(|c| c.tick(ctx, host, now));
        for event in events.unwrap_or_default() {
            out.extend(self.after_consent(host, event, now));
        }
        self.edge.later(out, host.now_ms())
    }

    /// Whether request `ctx` carries a minted token, so that its answer's status matters.
    pub fn watches(&self, ctx: u32) -> bool {
        self.exchange.freshness.watches(ctx)
    }

    /// The upstream answered request `ctx` with `status` (`challenges`: its `WWW-Authenticate`
    /// values, read only for a 401): a 401 about its minted token evicts it (see
    /// `cache.evict_on_upstream_401`).
    pub fn on_response<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        status: Option<u16>,
        challenges: impl FnOnce() -> Vec<String>,
    ) {
        self.exchange.on_response(host, ctx, status, challenges);
    }

    /// Parks `req` where it waits: it resumes from this record alone.
    fn park(&mut self, req: Request, wait: Wait, now: u64) -> Verdict {
        self.edge.parked(req.ctx, &wait, now);
        let parked = Parked {
            request: req,
            wait,
            since_ms: now,
        };
        self.parked.insert(parked.request.ctx, parked);
        Verdict::Pause
    }

    /// The records of the parked requests `ctxs` whose wait is over, in order (a request that
    /// ended meanwhile has none).
    fn resume(&mut self, ctxs: &[u32]) -> Vec<Request> {
        ctxs.iter()
            .filter_map(|ctx| self.parked.remove(ctx))
            .map(|p| p.request)
            .collect()
    }
}

/// The answer to a request whose token service cannot be reached now.
const UNAVAILABLE: StsFailure = StsFailure::Unavailable("token service unavailable");

#[cfg(test)]
mod tests;
