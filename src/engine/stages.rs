//! The stages of a request after its route and credentials: `authorize` (the worker memo, then
//! trust: the subject verified against the trusted issuers) and `exchange` (the shared cache, a
//! consent, single flight, the actor token, the STS call). A request that must wait parks at
//! its stage with what that stage needs, and resumes there: after keys or an introspection at
//! `trust`, after the filter's actor token at `exchange`.

use std::borrow::Cow;

use super::calls::Owner;
use super::fresh::{served, Hot};
use super::{Engine, Step, Wait, UNAVAILABLE};
use crate::actor;
use crate::cache::{CacheKey, Cached};
use crate::client::ActorSource;
use crate::config::Grant;
use crate::endpoint::NoRandomness;
use crate::flights::{Exchange, Job, Parked, Waiter};
use crate::freshness::Served;
use crate::host::{Host, HttpCall, LogLevel};
use crate::introspection;
use crate::memo::Remembered;
use crate::metrics::Metric;
use crate::token::{self, Verified};
use crate::verdict::Verdict;

/// What a request brings to the exchange stage: its subject, a header actor token, and what
/// the trust stage found (the cache key, the verification).
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller<'a> {
    subject: &'a str,
    header_actor: Option<&'a str>,
    key: CacheKey,
    verified: Option<&'a Verified>,
}

impl<'a> Caller<'a> {
    /// A request parked for the filter's actor token, as it resumes.
    pub(super) fn resumed(parked: &'a Parked) -> Self {
        Caller {
            subject: &parked.subject,
            header_actor: parked.header_actor.as_deref(),
            key: parked.key,
            verified: parked.verified.as_ref(),
        }
    }
}

impl Engine {
    /// The memo and trust stages: a hot token is answered from the worker memo; otherwise the
    /// subject is verified (with trusted issuers; it may park for keys) and goes on to the
    /// exchange stage.
    pub(super) fn authorize<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        header_actor: Option<&str>,
    ) -> Verdict {
        if header_actor.is_none() {
            let (keys, now) = (&self.keys, at.now);
            if let Some(hit) = self
                .memo
                .get(at.profile, subject, now, |v| keys.still_valid(v, now))
            {
                host.metric(Metric::CacheHits, 1);
                token::log_debug(host, at.ctx, subject, "cache hit (worker)");
                let minted = matches!(hit.value, Cached::Token(_));
                if minted && self.freshness.due(hit.expires_at_ms, now) {
                    let hit = hit.clone();
                    return self.hot_memo_hit(host, at, subject, hit);
                }
                let facts = hit.verified.as_ref().map(|v| &v.facts);
                let verdict = self.outcomes.cached(host, &hit.value, subject, facts);
                self.freshness.served(at.ctx, &hit.value, served(hit));
                return verdict;
            }
        }
        self.trust(host, at, subject, header_actor, true)
    }

    /// The trust stage: verifies the subject (once per token and key set), then the exchange.
    /// With `may_wait`, a token naming an unknown key parks here for a fetch of the issuer's
    /// keys; a request resuming from that wait is refused instead of parking again.
    pub(super) fn trust<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        header_actor: Option<&str>,
        may_wait: bool,
    ) -> Verdict {
        let p = &self.client.profiles[at.profile];
        // Both spellings of an ES256 token share one entry.
        let key = p.cache_key(&token::canonical(subject), header_actor);
        let opaque = p
            .introspect
            .filter(|_| !introspection::is_jwt_shaped(subject));
        let verified = match opaque {
            Some(issuer) => {
                match self.introspected(host, at, subject, header_actor, &key, issuer) {
                    Ok(v) => Some(v),
                    Err(verdict) => return verdict,
                }
            }
            None if self.keys.enabled() => {
                match self.check_subject(host, at, subject, header_actor, &key, may_wait) {
                    Ok(v) => Some(v),
                    Err(verdict) => return verdict,
                }
            }
            None => None,
        };
        let caller = Caller {
            subject,
            header_actor,
            key,
            verified: verified.as_ref(),
        };
        self.admit(host, at, caller)
    }

    /// The authorize stage, for a subject the trust stage let through: the route's policy, then
    /// a forwarded issuer's token passed on, or the exchange.
    pub(super) fn admit<H: Host>(&mut self, host: &H, at: Step, caller: Caller<'_>) -> Verdict {
        let facts = caller.verified.map(|v| &v.facts);
        let policy = self.client.profiles[at.profile].policy;
        if !self.rules.permits(policy, facts) {
            return self.deny(host, at.ctx, caller, policy);
        }
        if let Some(v) = caller.verified.filter(|v| self.keys.forwards(v.issuer)) {
            // Already a token the services accept: no exchange.
            token::log_debug(host, at.ctx, caller.subject, "forwarded unchanged");
            return self.outcomes.forward(host, caller.subject, Some(&v.facts));
        }
        self.exchange(host, at, caller, None)
    }

    /// The exchange stage: the shared cache, then the user's consent (CIBA) or one STS call per
    /// key (joined by concurrent misses). `fetched_actor` is the filter's actor token when the
    /// request resumes with it.
    pub(super) fn exchange<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        caller: Caller<'_>,
        fetched_actor: Option<&str>,
    ) -> Verdict {
        let (ctx, profile, now) = (at.ctx, at.profile, at.now);
        let Caller {
            subject,
            header_actor,
            verified,
            ..
        } = caller;
        let consent = match self.client.profiles[profile].grant == Grant::Ciba {
            true => match self.consent_key(profile, subject, verified) {
                Some(k) => Some(k),
                None => {
                    return self
                        .outcomes
                        .invalid_token(host, "token names no user for consent")
                }
            },
            false => None,
        };
        let key = consent.as_ref().map_or(caller.key, |c| c.key);
        if let Some((hit, expires_at)) = self.cache.get(host, &key, now) {
            host.metric(Metric::CacheHits, 1);
            token::log_debug(host, ctx, subject, "cache hit");
            let verdict = self
                .outcomes
                .cached(host, &hit, subject, verified.map(|v| &v.facts));
            let entry = Served {
                key,
                expires_at_ms: expires_at,
            };
            self.freshness.served(ctx, &hit, entry);
            if matches!(hit, Cached::Token(_)) && self.freshness.due(expires_at, now) {
                let hot = Hot {
                    subject,
                    header_actor,
                    entry,
                    verified,
                };
                self.refresh_ahead(host, at, hot);
            }
            if header_actor.is_none() {
                let remembered = Remembered {
                    value: hit,
                    key,
                    expires_at_ms: expires_at,
                    verified: verified.cloned(),
                };
                self.memo.put(profile, subject, remembered, now);
            }
            return verdict;
        }
        host.metric(Metric::CacheMisses, 1);
        let subject_exp = verified
            .map(|v| v.exp)
            .or_else(|| token::unverified_exp(subject));
        if let Some(consent) = consent {
            let facts = verified.map(|v| &v.facts);
            return self.ask_consent(host, at, subject, consent, subject_exp, facts);
        }
        let waiter = Waiter { ctx, resume: None };
        if self.flights.join(&key, waiter).is_ok() {
            self.waits.insert(ctx, Wait::Flight(key));
            host.metric(Metric::Coalesced, 1);
            token::log_debug(host, ctx, subject, "waits on the STS call in flight");
            return Verdict::Pause;
        }
        let p = &self.client.profiles[profile];
        let (actor_token, actor_until_ms) = match p.actor.as_ref().map(|a| &a.source) {
            None => (None, None),
            Some(ActorSource::Header(_)) => (
                header_actor.map(str::to_string),
                actor::header_actor_until(header_actor, self.config.cache.expiry_skew_s),
            ),
            Some(ActorSource::ClientCredentials(ai)) => {
                let a = &self.client.actors[*ai];
                match self.actors.token_for(host, a, fetched_actor, now) {
                    Some((t, until)) => (Some(t), Some(until)),
                    None => return self.park_for_actor(host, at, caller, *ai),
                }
            }
        };
        let endpoint = self.client.endpoint(p.service);
        let actor_sub = p.actor_sub(actor_token.as_deref(), endpoint.client_id());
        let request = p.request(endpoint, subject, actor_token.as_deref(), now / 1000);
        let call = match self.send(host, (ctx, p.service), key, "STS call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        token::log_debug(host, ctx, subject, &format!("cache miss, STS call {call}"));
        let job = Job::Exchange(Exchange {
            profile,
            subject: subject.to_string(),
            subject_exp,
            actor_token,
            actor_until_ms,
            actor_sub,
            rememberable: header_actor.is_none(),
            verified: verified.cloned(),
            first_hop: None,
            refresh: false,
        });
        let waiter = Waiter { ctx, resume: None };
        self.flights.start(key, call, at.carrier, waiter, job);
        self.waits.insert(ctx, Wait::Flight(key));
        Verdict::Pause
    }

    /// Parks a request at the exchange stage until the filter's actor token arrives; one call
    /// per actor at a time.
    fn park_for_actor<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        caller: Caller<'_>,
        actor: usize,
    ) -> Verdict {
        let key = self.client.actors[actor].key;
        let parked = Parked {
            profile: at.profile,
            subject: caller.subject.to_string(),
            header_actor: caller.header_actor.map(str::to_string),
            key: caller.key,
            verified: caller.verified.cloned(),
        };
        let waiter = Waiter {
            ctx: at.ctx,
            resume: Some(Box::new(parked)),
        };
        self.waits.insert(at.ctx, Wait::Flight(key));
        let Err(waiter) = self.flights.join(&key, waiter) else {
            return Verdict::Pause;
        };
        let a = &self.client.actors[actor];
        let request = a.request(self.client.endpoint(a.service), at.now / 1000);
        let to = (at.ctx, a.service);
        let call = match self.send(host, to, key, "actor token call", request) {
            Ok(call) => call,
            Err(verdict) => return verdict,
        };
        if host.debug_enabled() {
            let msg = format!("ctx={} fetches the actor token, STS call {call}", at.ctx);
            host.log(LogLevel::Debug, &msg);
        }
        let job = Job::Actor { actor };
        self.flights.start(key, call, at.carrier, waiter, job);
        Verdict::Pause
    }

    /// A verified token that fails `policy`: 403, the reason in the debug log (scopes and
    /// claim names, never a value).
    fn deny<H: Host>(&self, host: &H, ctx: u32, caller: Caller<'_>, policy: usize) -> Verdict {
        if host.debug_enabled() {
            let claims = caller.verified.and_then(|v| v.claims.as_deref());
            let read = || token::claims(caller.subject);
            let why = match claims.map(Cow::Borrowed).or_else(|| read().map(Cow::Owned)) {
                Some(c) => self.rules.reason(policy, &c),
                None => "policy not met".to_string(),
            };
            token::log_debug(host, ctx, caller.subject, &why);
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
