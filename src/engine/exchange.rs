//! The exchange stage: the worker memo and the shared cache, then one STS call per key
//! (joined by concurrent misses), with the filter's own actor token fetched first when a
//! delegation needs it. It owns the cache, the memo, the flights of STS calls, the actor tokens
//! and the freshness records, and says of each request: served, waiting, or on to the user's
//! consent. What an answer becomes is in `exchanged.rs`, refresh-ahead and eviction in `refresh_evict.rs`.

use super::calls::{Calls, Owner};
use super::extract::Credentials;
use super::request::{At, Next, Request, Wait};
use super::setup::Setup;
use super::UNAVAILABLE;
use crate::actor::{self, Actors};
use crate::cache::{CacheKey, Cached, SharedCache};
use crate::caller::{Subject, TraceContext};
use crate::client::ActorSource;
use crate::config::Config;
use crate::endpoint::NoRandomness;
use crate::flights::{Exchange, Flights, Job};
use crate::freshness::{Freshness, Served};
use crate::host::{Host, HttpCall, LogLevel};
use crate::memo::{Memo, Remembered};
use crate::metrics::Metric;
use crate::token::{self, Verified};
use crate::verdict::Verdict;

/// What a memo hit is checked against (its verification still holds) and told to (who the
/// verification names).
pub(super) type MemoChecks<'a> = (
    &'a dyn Fn(&Verified) -> bool,
    &'a mut dyn FnMut(&Verified, &str),
);

/// The exchange stage of one worker.
pub(super) struct Exchanges {
    pub(super) cache: SharedCache,
    pub(super) memo: Memo,
    /// The STS calls in the air (exchanges and the filter's actor tokens), and who waits.
    pub(super) flights: Flights,
    pub(super) actors: Actors,
    /// Refresh-ahead claims, served minted tokens, evictions.
    pub(super) freshness: Freshness,
}

impl Exchanges {
    /// The stage for `config` with `profiles` exchange profiles; `verified_only`: with trusted
    /// issuers, only answers resting on a verification are remembered by the memo.
    pub(super) fn new(config: &Config, profiles: usize, verified_only: bool) -> Self {
        let cap = config.cache.max_entries as usize;
        Exchanges {
            cache: SharedCache::new(config.cache.max_entries),
            memo: Memo::new(profiles, cap, verified_only),
            flights: Flights::default(),
            actors: Actors::new(config.cache),
            freshness: Freshness::new(&config.cache, refresh_hold_ms(config)),
        }
    }

    /// A hot token answered from the worker memo for request `c.ctx`: a bearer token bound to
    /// nothing, no header actor, a route that takes bearer tokens, a verification that is
    /// `still_valid` and that the profile's policy still allows (`identify` hears it); else the
    /// credentials go back, on to trust.
    pub(super) fn memo_answer<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        c: Credentials,
        (still_valid, identify): MemoChecks<'_>,
    ) -> Result<Verdict, Credentials> {
        if !c.memo_may_answer(s) {
            return Err(c);
        }
        let holds = |v: &Verified| s.memo_may_serve(c.profile, v, at.now) && still_valid(v);
        let (ctx, profile) = (c.ctx, c.profile);
        let hit = self.memo_hit(s, host, at, (ctx, profile), c.subject, (&holds, identify));
        hit.map_err(|subject| Credentials { subject, ..c })
    }

    /// A hot token answered from the worker memo (its verification still `holds`); `Err` hands
    /// the subject back for the trust stage.
    fn memo_hit<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        (ctx, profile): (u32, usize),
        subject: Subject,
        (holds, identify): MemoChecks<'_>,
    ) -> Result<Verdict, Subject> {
        let Some(hit) = self.memo.get(profile, subject.token(), at.now, holds) else {
            return Err(subject);
        };
        if let Some(v) = &hit.verified {
            identify(v, subject.token());
        }
        host.metric(Metric::CacheHits, 1);
        token::log_debug(host, ctx, subject.token(), "cache hit (worker)");
        let minted = matches!(hit.value, Cached::Token(_));
        if minted && self.freshness.due(hit.expires_at_ms, at.now) {
            let hit = hit.clone();
            return Ok(self.hot_memo_hit(s, host, at, (ctx, profile), subject, hit));
        }
        let answer = (&hit.value, Some(served(hit)));
        let verified = hit.verified.as_ref();
        let freshness = &mut self.freshness;
        Ok(s.serve(freshness, host, &[ctx], answer, (subject.token(), verified)))
    }

    /// The shared cache under `key`, then one STS call per key (joined by concurrent misses).
    /// With `consent`, a miss goes on to the user's consent ([`Next::Go`]). `fetched_actor` is
    /// the filter's actor token when the request resumes with it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        at: At,
        req: &Request,
        (key, consent): (CacheKey, bool),
        fetched_actor: Option<&str>,
    ) -> Next<()> {
        let (ctx, profile, now) = (req.ctx, req.profile, at.now);
        if let Some((hit, expires_at)) = self.cache.get(host, &key, now) {
            host.metric(Metric::CacheHits, 1);
            token::log_debug(host, ctx, req.token(), "cache hit");
            let entry = Served {
                key,
                expires_at_ms: expires_at,
            };
            let answer = (&hit, Some(entry));
            let subject = (req.token(), req.verified.as_ref());
            let verdict = s.serve(&mut self.freshness, host, &[ctx], answer, subject);
            if matches!(hit, Cached::Token(_)) && self.freshness.due(expires_at, now) {
                self.refresh_ahead(s, host, at, req, entry);
            }
            if req.memo_may_hold() {
                let remembered = Remembered {
                    value: hit,
                    key,
                    expires_at_ms: expires_at,
                    verified: req.verified.clone(),
                };
                self.memo.put(profile, req.token(), remembered, now);
            }
            return Next::Stop(verdict);
        }
        host.metric(Metric::CacheMisses, 1);
        if consent {
            return Next::Go(());
        }
        if self.flights.join(&key, ctx) {
            host.metric(Metric::Coalesced, 1);
            token::log_debug(host, ctx, req.token(), "waits on the STS call in flight");
            return Next::Park(Wait::Flight(key));
        }
        let actor = match self.actor_for(s, host, profile, req.actor(), fetched_actor, now) {
            Ok(actor) => actor,
            Err(ai) => return self.fetch_actor((s, calls), host, at, req, ai),
        };
        let x = exchange_job(s, req, actor, false);
        let p = &s.client.profiles[profile];
        let endpoint = s.client.endpoint(p.service);
        let request = p.request(endpoint, req.token(), x.actor_token.as_deref(), now / 1000);
        let request = request.map(|r| x.trace.on(r));
        let call = match send((s, calls), host, (ctx, p.service), key, "STS call", request) {
            Ok(call) => call,
            Err(verdict) => return Next::Stop(verdict),
        };
        let what = format!("cache miss, STS call {call}");
        token::log_debug(host, ctx, req.token(), &what);
        self.flights
            .start(key, call, at.carrier, ctx, Job::Exchange(Box::new(x)));
        Next::Park(Wait::Flight(key))
    }

    /// The filter's own actor token for `req`, fetched once per actor at a time: the request
    /// waits for it.
    fn fetch_actor<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        at: At,
        req: &Request,
        actor: usize,
    ) -> Next<()> {
        let key = s.client.actors[actor].key;
        let ctx = req.ctx;
        if self.flights.join(&key, ctx) {
            return Next::Park(Wait::Actor(key));
        }
        let a = &s.client.actors[actor];
        let request = a.request(s.client.endpoint(a.service), at.now / 1000);
        let request = request.map(|r| req.trace.on(r));
        let to = (ctx, a.service);
        let call = match send((s, calls), host, to, key, "actor token call", request) {
            Ok(call) => call,
            Err(verdict) => return Next::Stop(verdict),
        };
        if host.debug_enabled() {
            let msg = format!("ctx={ctx} fetches the actor token, STS call {call}");
            host.log(LogLevel::Debug, &msg);
        }
        self.flights
            .start(key, call, at.carrier, ctx, Job::Actor { actor });
        Next::Park(Wait::Actor(key))
    }

    /// The actor token a delegation of `profile` sends now and until when it is good (ms):
    /// none for an impersonation, the request's header actor token, or the filter's own
    /// (`fetched` when the request resumes with it). `Err(actor)`: the filter's own token of
    /// that actor profile is not at hand.
    pub(super) fn actor_for<H: Host>(
        &self,
        s: &Setup,
        host: &H,
        profile: usize,
        header_actor: Option<&str>,
        fetched: Option<&str>,
        now: u64,
    ) -> Result<(Option<String>, Option<u64>), usize> {
        let p = &s.client.profiles[profile];
        match p.actor.as_ref().map(|a| &a.source) {
            None => Ok((None, None)),
            Some(ActorSource::Header(_)) => Ok((
                header_actor.map(str::to_string),
                actor::header_actor_until(header_actor, s.config.cache.expiry_skew_s),
            )),
            Some(ActorSource::ClientCredentials(ai)) => {
                let a = &s.client.actors[*ai];
                match self.actors.token_for(host, a, fetched, now) {
                    Some((t, until)) => Ok((Some(t), Some(until))),
                    None => Err(*ai),
                }
            }
        }
    }

    /// The STS calls whose carrier went away (and refreshes queued by a hit), sent again,
    /// built anew; the waiters of each that could not be sent, with their verdict.
    pub(super) fn send_orphans<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        now: u64,
    ) -> Vec<(Vec<u32>, Verdict)> {
        let mut out = Vec::new();
        for (key, job) in self.flights.orphans() {
            let (request, service) = match &job {
                Job::Exchange(x) if x.first_hop.is_some() => {
                    (second_hop_request(s, x, now), hop_service(s, x))
                }
                Job::Exchange(x) => {
                    // The filter's own actor token as it is now; else the one first sent.
                    let recorded = x.actor_token.as_deref();
                    let actor = self.actor_for(s, host, x.profile, recorded, None, now);
                    let actor = actor.map_or_else(|_| x.actor_token.clone(), |(t, _)| t);
                    let p = &s.client.profiles[x.profile];
                    let endpoint = s.client.endpoint(p.service);
                    let r = p.request(endpoint, &x.subject, actor.as_deref(), now / 1000);
                    (r.map(|r| x.trace.on(r)), p.service)
                }
                Job::Actor { actor } => {
                    let a = &s.client.actors[*actor];
                    (
                        a.request(s.client.endpoint(a.service), now / 1000),
                        a.service,
                    )
                }
                Job::Introspect { .. } => continue,
            };
            let what = match &job {
                Job::Exchange(x) if x.refresh && x.first_hop.is_none() => "refresh ahead",
                _ => "call sent again",
            };
            let sent = calls.send(host, Owner::Flight(key), what, request);
            s.count_service(host, service, sent.is_ok());
            let Some(waiters) = self.flights.send_again(&key, sent.ok()) else {
                continue;
            };
            if waiters.is_empty() {
                if let Job::Exchange(x) = &job {
                    if x.refresh {
                        self.refresh_failed(host, &key, "its call could not be sent");
                    }
                }
                continue;
            }
            out.push((waiters, s.outcomes.failure(host, &UNAVAILABLE)));
        }
        out
    }
}

/// The exchange `req` makes with `(actor_token, actor_until_ms)`: what deciding on its answer,
/// or sending it again, needs. A `refresh` replaces a live entry ahead of its end.
pub(super) fn exchange_job(
    s: &Setup,
    req: &Request,
    (actor_token, actor_until_ms): (Option<String>, Option<u64>),
    refresh: bool,
) -> Exchange {
    let p = &s.client.profiles[req.profile];
    let client_id = s.client.endpoint(p.service).client_id();
    Exchange {
        profile: req.profile,
        subject: req.token().to_string(),
        subject_exp: req.subject_exp(),
        actor_sub: p.actor_sub(actor_token.as_deref(), client_id),
        actor_token,
        actor_until_ms,
        rememberable: req.memo_may_hold(),
        verified: req.verified.clone(),
        first_hop: None,
        refresh,
        // A refresh ahead is the root's, made for no request.
        trace: if refresh {
            TraceContext::default()
        } else {
            req.trace.clone()
        },
    }
}

/// Sends a freshly built call of the flight for `key` from request `ctx` to token service
/// `service`; when it cannot be sent, the request's verdict is the outage answer.
fn send<H: Host>(
    (s, calls): (&Setup, &mut Calls),
    host: &H,
    (ctx, service): (u32, usize),
    key: CacheKey,
    what: &str,
    request: Result<HttpCall, NoRandomness>,
) -> Result<u32, Verdict> {
    let what = format!("ctx={ctx} {what}");
    let sent = calls.send(host, Owner::Flight(key), &what, request);
    s.count_service(host, service, sent.is_ok());
    sent.map_err(|_| s.outcomes.failure(host, &UNAVAILABLE))
}

/// The token service of the hop of `x` that is in the air.
pub(super) fn hop_service(s: &Setup, x: &Exchange) -> usize {
    let p = &s.client.profiles[x.profile];
    let hop = p.then.as_deref().filter(|_| x.first_hop.is_some());
    hop.unwrap_or(p).service
}

/// The second hop's request of a chain whose first hop answered.
pub(super) fn second_hop_request(
    s: &Setup,
    x: &Exchange,
    now: u64,
) -> Result<HttpCall, NoRandomness> {
    let p = &s.client.profiles[x.profile];
    match (&p.then, &x.first_hop) {
        (Some(then), Some(hop)) => {
            let endpoint = s.client.endpoint(then.service);
            then.hop_request(endpoint, &hop.token, &hop.issued_type, now / 1000)
        }
        // Not a chain: the first hop's own request (never reached).
        _ => p.request(s.client.endpoint(p.service), &x.subject, None, now / 1000),
    }
}

/// The entry a memo hit serves.
pub(super) fn served(hit: &Remembered) -> Served {
    Served {
        key: hit.key,
        expires_at_ms: hit.expires_at_ms,
    }
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
