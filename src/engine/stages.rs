//! The stages of a request after its route and credentials: the worker memo, then `trust` (the
//! subject verified against the trusted issuers), `authorize` (the route's policy, a forwarded
//! issuer) and `exchange` (the shared cache, a consent, single flight, the actor token, the STS
//! call). A request that must wait parks at its stage as its [`Request`] record, and resumes
//! there: after keys or an introspection at `trust`, after the filter's actor token at
//! `exchange`.

use std::borrow::Cow;

use super::calls::Owner;
use super::fresh::served;
use super::request::{At, Next, Request, Wait};
use super::{serve, Engine, UNAVAILABLE};
use crate::actor;
use crate::cache::{CacheKey, Cached};
use crate::caller::Subject;
use crate::client::ActorSource;
use crate::config::Grant;
use crate::endpoint::NoRandomness;
use crate::flights::{Exchange, Job};
use crate::freshness::Served;
use crate::host::{Host, HttpCall, LogLevel};
use crate::introspection;
use crate::memo::Remembered;
use crate::metrics::Metric;
use crate::token;
use crate::verdict::Verdict;

impl Engine {
    /// The memo and trust stages: a hot token is answered from the worker memo; otherwise the
    /// request's record is made (its cache key) and the subject is verified (with trusted
    /// issuers; it may park for keys or an introspection) on the way to the exchange stage.
    pub(super) fn memo_or_trust<H: Host>(
        &mut self,
        host: &H,
        at: At,
        (ctx, profile): (u32, usize),
        subject: Subject,
        header_actor: Option<String>,
    ) -> Verdict {
        if header_actor.is_none() {
            let (keys, now) = (&self.keys, at.now);
            if let Some(hit) = self
                .memo
                .get(profile, subject.token(), now, |v| keys.still_valid(v, now))
            {
                host.metric(Metric::CacheHits, 1);
                token::log_debug(host, ctx, subject.token(), "cache hit (worker)");
                let minted = matches!(hit.value, Cached::Token(_));
                if minted && self.freshness.due(hit.expires_at_ms, now) {
                    let hit = hit.clone();
                    return self.hot_memo_hit(host, at, (ctx, profile), subject, hit);
                }
                let parts = (&self.outcomes, &mut self.freshness);
                let answer = (&hit.value, Some(served(hit)));
                let facts = hit.verified.as_ref().map(|v| &v.facts);
                return serve(parts, host, &[ctx], answer, subject.token(), facts);
            }
        }
        let p = &self.client.profiles[profile];
        // Both spellings of an ES256 token share one entry.
        let key = p.cache_key(&token::canonical(subject.token()), header_actor.as_deref());
        let req = Request {
            ctx,
            profile,
            subject,
            header_actor,
            key,
            verified: None,
        };
        self.trust(host, at, req, true)
    }

    /// The trust stage: verifies the subject (once per token and key set), then admits it.
    /// With `may_wait`, a token naming an unknown key parks here for a fetch of the issuer's
    /// keys; a request resuming from that wait is refused instead of parking again.
    pub(super) fn trust<H: Host>(
        &mut self,
        host: &H,
        at: At,
        mut req: Request,
        may_wait: bool,
    ) -> Verdict {
        let p = &self.client.profiles[req.profile];
        let opaque = p
            .introspect
            .filter(|_| !introspection::is_jwt_shaped(req.token()));
        let found = match opaque {
            Some(issuer) => self.introspected(host, at, &req, issuer),
            None if self.keys.enabled() => self.check_subject(host, at, &req, may_wait),
            None => Next::Go(None),
        };
        match found {
            Next::Go(verified) => {
                req.verified = verified;
                self.authorize(host, at, req)
            }
            Next::Stop(verdict) => verdict,
            Next::Park(wait) => self.park(req, wait, at.now),
        }
    }

    /// The authorize stage, for a subject the trust stage let through: the route's policy, then
    /// a forwarded issuer's token passed on, or the exchange.
    pub(super) fn authorize<H: Host>(&mut self, host: &H, at: At, req: Request) -> Verdict {
        let facts = req.verified.as_ref().map(|v| &v.facts);
        let policy = self.client.profiles[req.profile].policy;
        if !self.rules.permits(policy, facts) {
            return self.deny(host, &req, policy);
        }
        if let Some(v) = req
            .verified
            .as_ref()
            .filter(|v| self.keys.forwards(v.issuer))
        {
            // Already a token the services accept: no exchange.
            token::log_debug(host, req.ctx, req.token(), "forwarded unchanged");
            return self.outcomes.forward(host, req.token(), Some(&v.facts));
        }
        self.exchange(host, at, req, None)
    }

    /// The exchange stage: the shared cache, then the user's consent (CIBA) or one STS call per
    /// key (joined by concurrent misses). `fetched_actor` is the filter's actor token when the
    /// request resumes with it.
    pub(super) fn exchange<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: Request,
        fetched_actor: Option<&str>,
    ) -> Verdict {
        let (ctx, profile, now) = (req.ctx, req.profile, at.now);
        let consent = match self.client.profiles[profile].grant == Grant::Ciba {
            true => match self.consent_key(profile, req.token(), req.verified.as_ref()) {
                Some(k) => Some(k),
                None => {
                    return self
                        .outcomes
                        .invalid_token(host, "token names no user for consent")
                }
            },
            false => None,
        };
        let key = consent.as_ref().map_or(req.key, |c| c.key);
        if let Some((hit, expires_at)) = self.cache.get(host, &key, now) {
            host.metric(Metric::CacheHits, 1);
            token::log_debug(host, ctx, req.token(), "cache hit");
            let entry = Served {
                key,
                expires_at_ms: expires_at,
            };
            let parts = (&self.outcomes, &mut self.freshness);
            let facts = req.verified.as_ref().map(|v| &v.facts);
            let verdict = serve(parts, host, &[ctx], (&hit, Some(entry)), req.token(), facts);
            if matches!(hit, Cached::Token(_)) && self.freshness.due(expires_at, now) {
                self.refresh_ahead(host, at, &req, entry);
            }
            if req.header_actor.is_none() {
                let remembered = Remembered {
                    value: hit,
                    key,
                    expires_at_ms: expires_at,
                    verified: req.verified.clone(),
                };
                self.memo.put(profile, req.token(), remembered, now);
            }
            return verdict;
        }
        host.metric(Metric::CacheMisses, 1);
        let subject_exp = req.subject_exp();
        if let Some(consent) = consent {
            return self.ask_consent(host, at, req, consent, subject_exp);
        }
        if self.flights.join(&key, ctx) {
            host.metric(Metric::Coalesced, 1);
            token::log_debug(host, ctx, req.token(), "waits on the STS call in flight");
            return self.park(req, Wait::Flight(key), now);
        }
        let actor = match self.actor_for(host, profile, req.actor(), fetched_actor, now) {
            Ok(actor) => actor,
            Err(ai) => return self.park_for_actor(host, at, req, ai),
        };
        let x = self.exchange_job(&req, actor, false);
        let p = &self.client.profiles[profile];
        let endpoint = self.client.endpoint(p.service);
        let request = p.request(endpoint, req.token(), x.actor_token.as_deref(), now / 1000);
        let call = match self.send(host, (ctx, p.service), key, "STS call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        token::log_debug(
            host,
            ctx,
            req.token(),
            &format!("cache miss, STS call {call}"),
        );
        self.flights
            .start(key, call, at.carrier, ctx, Job::Exchange(x));
        self.park(req, Wait::Flight(key), now)
    }

    /// The actor token a delegation of `profile` sends now and until when it is good (ms):
    /// none for an impersonation, the request's header actor token, or the filter's own
    /// (`fetched` when the request resumes with it). `Err(actor)`: the filter's own token of
    /// that actor profile is not at hand.
    pub(super) fn actor_for<H: Host>(
        &self,
        host: &H,
        profile: usize,
        header_actor: Option<&str>,
        fetched: Option<&str>,
        now: u64,
    ) -> Result<(Option<String>, Option<u64>), usize> {
        let p = &self.client.profiles[profile];
        match p.actor.as_ref().map(|a| &a.source) {
            None => Ok((None, None)),
            Some(ActorSource::Header(_)) => Ok((
                header_actor.map(str::to_string),
                actor::header_actor_until(header_actor, self.config.cache.expiry_skew_s),
            )),
            Some(ActorSource::ClientCredentials(ai)) => {
                let a = &self.client.actors[*ai];
                match self.actors.token_for(host, a, fetched, now) {
                    Some((t, until)) => Ok((Some(t), Some(until))),
                    None => Err(*ai),
                }
            }
        }
    }

    /// The exchange `req` makes with `(actor_token, actor_until_ms)`: what deciding on its
    /// answer, or sending it again, needs. A `refresh` replaces a live entry ahead of its end.
    pub(super) fn exchange_job(
        &self,
        req: &Request,
        (actor_token, actor_until_ms): (Option<String>, Option<u64>),
        refresh: bool,
    ) -> Exchange {
        let p = &self.client.profiles[req.profile];
        let client_id = self.client.endpoint(p.service).client_id();
        Exchange {
            profile: req.profile,
            subject: req.token().to_string(),
            subject_exp: req.subject_exp(),
            actor_sub: p.actor_sub(actor_token.as_deref(), client_id),
            actor_token,
            actor_until_ms,
            rememberable: req.header_actor.is_none(),
            verified: req.verified.clone(),
            first_hop: None,
            refresh,
        }
    }

    /// Parks a request at the exchange stage until the filter's actor token arrives;
    /// one call per actor at a time.
    fn park_for_actor<H: Host>(&mut self, host: &H, at: At, req: Request, actor: usize) -> Verdict {
        let key = self.client.actors[actor].key;
        let ctx = req.ctx;
        if self.flights.join(&key, ctx) {
            return self.park(req, Wait::Actor(key), at.now);
        }
        let a = &self.client.actors[actor];
        let request = a.request(self.client.endpoint(a.service), at.now / 1000);
        let to = (ctx, a.service);
        let call = match self.send(host, to, key, "actor token call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        if host.debug_enabled() {
            let msg = format!("ctx={ctx} fetches the actor token, STS call {call}");
            host.log(LogLevel::Debug, &msg);
        }
        let job = Job::Actor { actor };
        self.flights.start(key, call, at.carrier, ctx, job);
        self.park(req, Wait::Actor(key), at.now)
    }

    /// A verified token that fails `policy`: 403, the reason in the debug log (scopes and
    /// claim names, never a value).
    fn deny<H: Host>(&self, host: &H, req: &Request, policy: usize) -> Verdict {
        if host.debug_enabled() {
            let claims = req.verified.as_ref().and_then(|v| v.claims.as_deref());
            let read = || token::claims(req.token());
            let why = match claims.map(Cow::Borrowed).or_else(|| read().map(Cow::Owned)) {
                Some(c) => self.rules.reason(policy, &c),
                None => "policy not met".to_string(),
            };
            token::log_debug(host, req.ctx, req.token(), &why);
        }
        let scope = self.rules.challenge_scope(policy);
        self.outcomes.policy_denied(host, scope.as_deref())
    }

    /// Sends a freshly built call of the flight for `key` from request `ctx` to token service
    /// `service`; when it cannot be sent, the request's verdict is the outage answer.
    fn send<H: Host>(
        &mut self,
        host: &H,
        (ctx, service): (u32, usize),
        key: CacheKey,
        what: &str,
        request: Result<HttpCall, NoRandomness>,
    ) -> Result<u32, Verdict> {
        let what = format!("ctx={ctx} {what}");
        let sent = self.calls.send(host, Owner::Flight(key), &what, request);
        self.count_service(host, service, sent.is_ok());
        sent.map_err(|_| self.outcomes.failure(host, &UNAVAILABLE))
    }

    /// With `token_services`: one call to `service`, sent or failed.
    pub(super) fn count_service<H: Host>(&self, host: &H, service: usize, sent: bool) {
        if self.config.token_services.is_empty() {
            return;
        }
        let n = u8::try_from(service).unwrap_or(u8::MAX);
        host.metric(Metric::ServiceCalls(n), u64::from(sent));
        if !sent {
            host.metric(Metric::ServiceErrors(n), 1);
        }
    }
}
