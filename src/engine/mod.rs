//! The request state machine of one worker, as a dispatcher: host events (request headers, a
//! callout's answer, the root's tick, a request's end) go to the parts that own the state — the
//! route rules, the trusted issuers' [`Keys`], the worker [`Memo`], the shared cache, the
//! [`Flights`] of STS calls — and come back as verdicts. Nothing here touches proxy-wasm: the
//! host is reached through [`Host`].

use std::collections::HashMap;

use crate::actor::Actors;
use crate::cache::{Cached, SharedCache};
use crate::caller;
use crate::client::Client;
use crate::config::{Config, ConfigError, RouteAction};
use crate::consent::Consents;
use crate::endpoint::NoRandomness;
use crate::flights::{Flights, Job};
use crate::freshness::{Freshness, Served};
use crate::host::{Host, HttpAnswer, RequestHeaders};
use crate::introspection::Introspector;
use crate::keys::{KeyTick, Keys};
use crate::memo::Memo;
use crate::metrics::Metric;
use crate::outcomes::Outcomes;
use crate::policy::{Facts, Rules};
use crate::resource::ResourceMetadata;
use crate::route::{Ambiguous, Routes};
use crate::sts::StsFailure;
use crate::verdict::{to_each, Verdict};
use calls::{Calls, Owner};
use exchanged::Hop;
use request::{At, Parked, Request, Wait};

mod advertise;
mod calls;
mod ciba;
mod exchanged;
mod fresh;
mod opaque;
mod orphans;
mod request;
mod stages;
mod trust;

/// The per-worker filter state: the compiled configuration and the parts that own the rest.
pub struct Engine {
    config: Config,
    client: Client,
    routes: Routes,
    outcomes: Outcomes,
    /// The access policies and claim headers.
    rules: Rules,
    cache: SharedCache,
    actors: Actors,
    keys: Keys,
    introspection: Introspector,
    memo: Memo,
    /// Refresh-ahead claims, served minted tokens, evictions.
    freshness: Freshness,
    flights: Flights,
    /// Every callout in the air, and whose answer it is.
    calls: Calls,
    /// Each parked request, and where it waits.
    parked: HashMap<u32, Parked>,
    /// CIBA consents, when `sts.ciba` is configured.
    consents: Option<Consents>,
    /// RFC 9728 metadata, when `protected_resource` is configured.
    metadata: Option<ResourceMetadata>,
    /// With `metadata`: the metadata URL of each parked request, for the 401 it may get.
    advertised: HashMap<u32, String>,
}

impl Engine {
    /// An engine for a validated configuration; compiling it can still refuse it (a key that
    /// does not parse, a route prefix that could never match).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let client = Client::compile(&config)?;
        let routes = Routes::compile(&config.routes)?;
        let keys = Keys::compile(&config.trusted_issuers)?;
        let introspection = Introspector::compile(&config.trusted_issuers, &config.cache)?;
        let cap = config.cache.max_entries as usize;
        let consents = match &config.sts.ciba {
            Some(ciba) => {
                let mut id = [0u8; 8];
                getrandom::getrandom(&mut id)
                    .map_err(|_| ConfigError::new("sts.ciba", "no randomness for a worker id"))?;
                let id = u64::from_be_bytes(id);
                // Every slot is written at start: a large cache must not mean a slow start.
                let slots = config.cache.max_entries.min(MAX_CONSENT_SLOTS);
                Some(Consents::new(ciba, slots, config.sts.timeout_ms, id))
            }
            None => None,
        };
        Ok(Engine {
            consents,
            metadata: config
                .protected_resource
                .as_ref()
                .map(ResourceMetadata::new),
            advertised: HashMap::new(),
            memo: Memo::new(client.profiles.len(), cap, keys.enabled()),
            freshness: Freshness::new(&config.cache, refresh_hold_ms(&config)),
            cache: SharedCache::new(config.cache.max_entries),
            actors: Actors::new(config.cache),
            outcomes: Outcomes::new(&config),
            rules: Rules::new(&config),
            flights: Flights::default(),
            calls: Calls::default(),
            parked: HashMap::new(),
            config,
            client,
            routes,
            keys,
            introspection,
        })
    }

    /// The token services the per-service counters are kept for: none without
    /// `token_services`, else `sts` and each named one, in service order.
    pub fn counted_services(&self) -> Vec<String> {
        if self.config.token_services.is_empty() {
            return Vec::new();
        }
        let n = self.config.service_count();
        (0..n)
            .map(|i| self.config.service_name(i).to_string())
            .collect()
    }

    /// Work at start, on the root context before any request: the consents' claim slots exist
    /// (so that claiming one is always a compare-and-swap).
    pub fn on_start<H: Host>(&self, host: &H) {
        if let Some(consents) = &self.consents {
            consents.prepare(host);
        }
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
        if let Some(m) = &self.metadata {
            if let Some(reply) = m.answer(req) {
                return Verdict::Respond(reply);
            }
            let v = self.route(host, ctx, req);
            return self.advertise_at_start(ctx, req, v);
        }
        self.route(host, ctx, req)
    }

    /// The route and credential stages of a request, then [`Engine::memo_or_trust`].
    fn route<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        let profile = match self.routes.select(req) {
            Ok(RouteAction::Bypass) => {
                host.metric(Metric::Bypassed, 1);
                return self.outcomes.pass();
            }
            Ok(RouteAction::Exchange(p)) => p,
            Err(Ambiguous) => return self.outcomes.ambiguous_path(host, ctx),
        };
        let rules = &self.config.subject_token;
        let subject = match caller::subject(req, rules) {
            Ok(s) => s,
            Err(why) => {
                // A route whose policy asks for anything never passes a request without a token.
                let policy = self.client.profiles[profile].policy;
                let open = self.rules.permits(policy, None);
                return self.outcomes.no_token(host, ctx, why, open);
            }
        };
        let actor = match self.client.profiles[profile].actor_header() {
            Some(name) => match caller::actor(req, name, rules.max_bytes) {
                Some(t) => Some(t),
                None => {
                    return self
                        .outcomes
                        .invalid_token(host, "actor token missing or malformed")
                }
            },
            None => None,
        };
        let at = At {
            carrier: Some(ctx),
            now: host.now_ms(),
        };
        self.memo_or_trust(host, at, (ctx, profile), subject, actor)
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
        let out = self.answered(host, receiver, call, answer);
        self.advertise(out)
    }

    fn answered<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let landed = match self.calls.land(host, call) {
            Some(Owner::Keys(issuer)) => {
                let event = self.keys.on_answer(host, issuer, answer);
                return self.after_keys(host, event, host.now_ms());
            }
            Some(Owner::Consent(key)) => {
                let now = host.now_ms();
                let consents = self.consents.as_mut();
                let event = consents.and_then(|c| c.on_answer(host, key, call, answer, now));
                return event.map_or_else(Vec::new, |e| self.after_consent(host, e, now));
            }
            Some(Owner::Flight(key) | Owner::Introspection(key)) => self.flights.land(&key, call),
            None => None,
        };
        let Some(landed) = landed else {
            return Vec::new();
        };
        let now = host.now_ms();
        match landed.job {
            Job::Introspect { issuer, .. } => {
                let w = landed.waiters;
                self.after_introspection(host, receiver, &landed.key, w, issuer, answer)
            }
            Job::Exchange(x) => {
                let (key, mut waiters) = (landed.key, landed.waiters);
                let judged = self.judge_hop(&x, answer);
                let at = (receiver, key, now);
                let judged = match self.next_hop(host, at, &x, judged, &mut waiters) {
                    Hop::Sent => return Vec::new(),
                    Hop::Done(judged) => judged,
                };
                self.resume(&waiters);
                let v = self.on_exchange_answer(host, call, &key, &x, &waiters, judged, now);
                to_each(waiters.iter().copied(), &v)
            }
            Job::Actor { actor } => {
                let requests = self.resume(&landed.waiters);
                let a = &self.client.actors[actor];
                match self.actors.on_answer(host, a, call, answer, now) {
                    Ok(token) => {
                        let at = At {
                            carrier: receiver,
                            now,
                        };
                        let mut out = Vec::with_capacity(requests.len());
                        for req in requests {
                            let ctx = req.ctx;
                            out.push((ctx, self.exchange(host, at, req, Some(&token))));
                        }
                        out
                    }
                    Err(failure) => {
                        let v = self.outcomes.actor_failed(host, call, &failure);
                        to_each(requests.iter().map(|r| r.ctx), &v)
                    }
                }
            }
        }
    }

    /// Forgets a request that ended (answered, or the client went away). If its context carried
    /// an STS call others still wait on, the call waits for the root to send it again.
    pub fn on_request_done(&mut self, ctx: u32) {
        self.advertised.remove(&ctx);
        self.freshness.take(ctx);
        match self.parked.remove(&ctx).map(|p| p.wait) {
            Some(Wait::Keys(issuer)) => self.keys.leave(ctx, issuer),
            Some(Wait::Flight(key) | Wait::Actor(key) | Wait::Introspection(key)) => {
                self.flights.leave(ctx, &key)
            }
            Some(Wait::Consent(key)) => {
                if let Some(c) = self.consents.as_mut() {
                    c.leave(ctx, &key);
                }
            }
            None => {}
        }
        let lost = self.flights.carrier_gone(ctx);
        self.calls.forget(lost);
    }

    /// Periodic work on the root context: sends again the STS calls whose carrier went away,
    /// and looks after the issuers' keys. Returns verdicts for requests that were waiting.
    pub fn on_tick<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let out = self.ticked(host);
        self.advertise(out)
    }

    fn ticked<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let mut out = self.send_orphans(host, now);
        self.memo.sweep(now);
        self.apply_evictions(host);
        for tick in self.keys.tick(host, now) {
            let event = match tick {
                KeyTick::Event(event) => event,
                KeyTick::Fetch(issuer) => {
                    let request = self.keys.fetch_call(issuer).ok_or(NoRandomness);
                    match self
                        .calls
                        .send(host, Owner::Keys(issuer), "key fetch", request)
                    {
                        Ok(call) => {
                            self.keys.fetch_sent(issuer, call, now);
                            continue;
                        }
                        Err(_) => self.keys.fetch_unsent(host, issuer, now),
                    }
                }
            };
            out.extend(self.after_keys(host, event, now));
        }
        out.extend(self.consent_tick(host, now));
        out
    }
}

impl Engine {
    /// Parks `req` where it waits: it resumes from this record alone.
    fn park(&mut self, req: Request, wait: Wait, now: u64) -> Verdict {
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

/// Hands the requests `ctxs` the answer `value` (a token, or a remembered rejection) of the
/// cache entry `entry`, if it was kept: the verdict, and the note that lets the upstream's 401
/// evict that entry. Every path that hands out an answer goes through here (a function of the
/// two parts it touches, so that a memo hit can serve while it holds the memo's entry).
fn serve<H: Host>(
    (outcomes, freshness): (&Outcomes, &mut Freshness),
    host: &H,
    ctxs: &[u32],
    (value, entry): (&Cached, Option<Served>),
    subject: &str,
    facts: Option<&Facts>,
) -> Verdict {
    if let Some(entry) = entry {
        for ctx in ctxs {
            freshness.served(*ctx, value, entry);
        }
    }
    outcomes.cached(host, value, subject, facts)
}

/// How long a refresh-ahead claim holds: both hops of a chain at the slowest token service,
/// and a tick to send it.
fn refresh_hold_ms(config: &Config) -> u64 {
    let slowest = (0..config.service_count())
        .map(|i| config.service(i).timeout_ms)
        .max()
        .unwrap_or(0);
    slowest.saturating_mul(2).saturating_add(1_000)
}

/// The most CIBA claim slots (the table is `cache.max_entries` slots up to this).
const MAX_CONSENT_SLOTS: u32 = 4096;

const UNAVAILABLE: StsFailure = StsFailure::Unavailable("token service unavailable");

#[cfg(test)]
mod tests;
