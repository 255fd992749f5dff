//! The trust stage: a subject JWT verified against the trusted issuers' keys (once per token and
//! key set, `may_act` included), or an opaque token introspected at the issuer its route names
//! (RFC 7662: the answer shared across workers, one call per token per worker). It owns the key
//! stores, the introspection endpoints and the introspections in the air, and says of each
//! request: trusted (with its verification), refused, or waiting.

use super::calls::{Calls, Owner};
use super::request::{At, Next, Request, Wait};
use super::setup::Setup;
use crate::config::{Config, ConfigError};
use crate::endpoint::NoRandomness;
use crate::flights::{Flights, Job, Landed};
use crate::host::{Host, HttpAnswer};
use crate::introspection::{self, Failure, Found, Introspector};
use crate::keys::{ActorCheck, Check, KeyEvent, KeyTick, Keys, Reading};
use crate::policy::{self, Facts, Rules};
use crate::token::{self, Binding, MayAct, Verified};
use crate::verdict::Verdict;

/// The trust stage of one worker.
pub(super) struct Trust {
    /// The trusted issuers' keys and the verifications they gave.
    pub(super) keys: Keys,
    introspection: Introspector,
    /// The introspections in the air (one per token per worker), and who waits on each.
    pub(super) flights: Flights,
}

impl Trust {
    /// The stage for the trusted issuers of `config`.
    pub(super) fn compile(config: &Config) -> Result<Trust, ConfigError> {
        Ok(Trust {
            keys: Keys::compile(&config.trusted_issuers)?,
            introspection: Introspector::compile(&config.trusted_issuers, &config.cache)?,
            flights: Flights::default(),
        })
    }

    /// Trust for `req`: its opaque token introspected at its route's issuer, its JWT verified
    /// against the trusted issuers, or (without any) the STS's to judge. With `may_wait`, a
    /// token naming an unknown key waits for a fetch of the issuer's keys; a request resuming
    /// from that wait is refused instead of waiting again.
    pub(super) fn check<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        at: At,
        req: &Request,
        may_wait: bool,
    ) -> Next<Option<Verified>> {
        let p = &s.client.profiles[req.profile];
        let opaque = p
            .introspect
            .filter(|_| !introspection::is_jwt_shaped(req.token()));
        match opaque {
            Some(issuer) => self.introspected((s, calls), host, at, req, issuer),
            None if self.keys.enabled() => self.verified(s, host, at, req, may_wait),
            None => Next::Go(None),
        }
    }

    /// Verifies the subject JWT of `req` (once per token and key set) and applies `may_act`.
    fn verified<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        req: &Request,
        may_wait: bool,
    ) -> Next<Option<Verified>> {
        if let Err(verdict) = self.check_header_actor(s, host, at, req) {
            return Next::Stop(verdict);
        }
        let p = &s.client.profiles[req.profile];
        let client_id = s.client.endpoint(p.service).client_id();
        let permits = |m: &MayAct| p.may_act_permits(m, req.actor(), client_id);
        let rules = &s.rules;
        let claims =
            |t: &str| token_facts(rules, t, &mut |name| policy::log_unwritable(host, name));
        let reading = Reading {
            may_act: &permits,
            claims: &claims,
        };
        let enforce = p.enforce_may_act && p.actor.is_some();
        let waiter = may_wait.then_some(req.ctx);
        let subject = req.token();
        let o = &s.outcomes;
        match self
            .keys
            .check(host, req.ctx, subject, &req.key, &reading, at.now, waiter)
        {
            Check::Valid(v) if v.may_act_ok || !enforce => Next::Go(Some(v)),
            Check::Valid(_) => Next::Stop(o.actor_not_allowed(host, req.ctx)),
            Check::Refused(e) => Next::Stop(o.refused_jwt(host, req.ctx, subject, e)),
            // Fetches run every second until the first keys arrive.
            Check::NoKeys => Next::Stop(o.no_keys(false)),
            Check::Wait(issuer) => Next::Park(Wait::Keys(issuer)),
        }
    }

    /// A header actor token that is a JWT of a trusted issuer must verify (else 401, or 503
    /// without keys); any other is the STS's to judge.
    fn check_header_actor<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        req: &Request,
    ) -> Result<(), Verdict> {
        let p = &s.client.profiles[req.profile];
        let (Some(actor), Some(_)) = (req.actor(), p.actor_header()) else {
            return Ok(());
        };
        match self.keys.check_actor(actor, at.now) {
            ActorCheck::Verified | ActorCheck::NotTrusted => Ok(()),
            ActorCheck::Refused(e) => Err(s.outcomes.refused_jwt(host, req.ctx, actor, e)),
            ActorCheck::NoKeys => Err(s.outcomes.no_keys(false)),
        }
    }

    /// Trust for the opaque subject of `req` at `issuer`: remembered by this worker or another,
    /// else one introspection call per token (joined by concurrent requests).
    fn introspected<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        at: At,
        req: &Request,
        issuer: usize,
    ) -> Next<Option<Verified>> {
        if let Err(verdict) = self.check_header_actor(s, host, at, req) {
            return Next::Stop(verdict);
        }
        if let Some(v) = self.keys.introspected(&req.key, issuer, at.now) {
            return acting(s, host, req, v);
        }
        let subject = req.token();
        let ikey = self.introspection.key(issuer, subject);
        match self.introspection.remembered(host, issuer, &ikey, at.now) {
            Some(Ok(found)) => return self.trusted(s, host, req, issuer, &found),
            Some(Err(failure)) => return Next::Stop(untrusted(s, host, req, failure)),
            None => {}
        }
        if self.flights.join(&ikey, req.ctx) {
            let what = "waits on the introspection in flight";
            token::log_debug(host, req.ctx, subject, what);
            return Next::Park(Wait::Introspection(ikey));
        }
        let request = match self.introspection.request(issuer, subject, at.now) {
            Ok(request) => request.map(|r| req.trace.on(r)),
            Err(failure) => return Next::Stop(untrusted(s, host, req, failure)),
        };
        let what = format!("ctx={} introspection", req.ctx);
        let Ok(call) = calls.send(host, Owner::Introspection(ikey), &what, request) else {
            return Next::Stop(untrusted(s, host, req, NOT_SENT));
        };
        token::log_debug(
            host,
            req.ctx,
            subject,
            &format!("introspection call {call}"),
        );
        let job = Job::Introspect {
            issuer,
            token: subject.to_string(),
        };
        self.flights.start(ikey, call, at.carrier, req.ctx, job);
        Next::Park(Wait::Introspection(ikey))
    }

    /// The introspection that `landed` answered (its issuer's answer taken up): what trust
    /// says of each request that waited for it.
    pub(super) fn introspected_all<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        landed: Landed,
        answer: &HttpAnswer,
        requests: Vec<Request>,
    ) -> Vec<(Request, Next<Option<Verified>>)> {
        let Job::Introspect { issuer, .. } = landed.job else {
            return Vec::new();
        };
        let now = host.now_ms();
        let judged = self
            .introspection
            .on_answer(host, issuer, &landed.key, answer, now);
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let next = match &judged {
                Ok(found) => self.trusted(s, host, &req, issuer, found),
                Err(failure) => Next::Stop(untrusted(s, host, &req, *failure)),
            };
            out.push((req, next));
        }
        out
    }

    /// A token `issuer` called active, as the verification of `req`: its claims judged
    /// (policies, claim headers), its `may_act` against the request's actor; remembered by this
    /// worker, under that issuer, until the answer's trust ends.
    fn trusted<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        req: &Request,
        issuer: usize,
        found: &Found,
    ) -> Next<Option<Verified>> {
        let p = &s.client.profiles[req.profile];
        let client_id = s.client.endpoint(p.service).client_id();
        let may_act = MayAct::from_claim(found.claims.get("may_act"));
        let may_act_ok = p.may_act_permits(&may_act, req.actor(), client_id);
        let facts = match s.rules.reads_claims() {
            true => s.rules.facts(&found.claims, &mut |name| {
                policy::log_unwritable(host, name)
            }),
            false => Default::default(),
        };
        let v = Verified {
            issuer,
            version: self.keys.version(issuer),
            // Without `exp` the token is trusted as long as its answer is.
            exp: found.exp.unwrap_or(u64::MAX),
            may_act_ok,
            facts,
            until_ms: Some(found.until_ms),
            binding: match s.config.trusted_issuers.get(issuer) {
                Some(t) if t.enforce_binding => Binding::from_cnf(found.claims.get("cnf")),
                _ => Binding::default(),
            },
            claims: Some(found.claims.clone()),
        };
        self.keys.remember_introspected(&req.key, v.clone());
        acting(s, host, req, v)
    }

    /// The keys' periodic work: fetches that are due sent through `calls`; the waits that
    /// ended.
    pub(super) fn tick<H: Host>(&mut self, calls: &mut Calls, host: &H, now: u64) -> Vec<KeyEvent> {
        let mut events = Vec::new();
        for tick in self.keys.tick(host, now) {
            match tick {
                KeyTick::Event(event) => events.push(event),
                KeyTick::Fetch(issuer) => {
                    let request = self.keys.fetch_call(issuer).ok_or(NoRandomness);
                    match calls.send(host, Owner::Keys(issuer), "key fetch", request) {
                        Ok(call) => self.keys.fetch_sent(issuer, call, now),
                        Err(_) => events.push(self.keys.fetch_unsent(host, issuer, now)),
                    }
                }
            }
        }
        events
    }

    /// The introspections whose carrier went away, sent again: the waiters of each that could
    /// not be sent, with their verdict.
    pub(super) fn send_orphans<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        now: u64,
    ) -> Vec<(Vec<u32>, Verdict)> {
        let mut out = Vec::new();
        for (key, job) in self.flights.orphans() {
            let Job::Introspect { issuer, token } = &job else {
                continue;
            };
            let request = self.introspection.request(*issuer, token, now);
            let sent =
                request.map(|r| calls.send(host, Owner::Introspection(key), "call sent again", r));
            let call = sent.ok().and_then(Result::ok);
            let Some(waiters) = self.flights.send_again(&key, call) else {
                continue;
            };
            if !waiters.is_empty() {
                out.push((waiters, s.outcomes.untrusted(host, NOT_SENT)));
            }
        }
        out
    }
}

/// What a verified token's claims allow and tell; `unwritable` hears each claim that cannot go
/// into its header.
fn token_facts(rules: &Rules, subject: &str, unwritable: &mut dyn FnMut(&str)) -> Facts {
    if !rules.reads_claims() {
        return Facts::default();
    }
    token::claims(subject).map_or_else(Facts::default, |c| rules.facts(&c, unwritable))
}

/// RFC 8693 §4.4 on an introspected token: its `may_act` must name the request's actor.
fn acting<H: Host>(s: &Setup, host: &H, req: &Request, v: Verified) -> Next<Option<Verified>> {
    let p = &s.client.profiles[req.profile];
    match v.may_act_ok || !(p.enforce_may_act && p.actor.is_some()) {
        true => Next::Go(Some(v)),
        false => Next::Stop(s.outcomes.actor_not_allowed(host, req.ctx)),
    }
}

/// An opaque token introspection did not make trusted: logged by fingerprint, answered.
fn untrusted<H: Host>(s: &Setup, host: &H, req: &Request, failure: Failure) -> Verdict {
    let why = format!("not trusted: {}", failure.description());
    token::log_debug(host, req.ctx, req.token(), &why);
    s.outcomes.untrusted(host, failure)
}

/// Why an introspection a request waits on was never made.
const NOT_SENT: Failure = Failure::Unavailable("the introspection endpoint could not be called");
