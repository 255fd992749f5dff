//! The trust stage for opaque tokens (RFC 7662): introspected at the issuer the route names,
//! the answer shared across workers, one call per token per worker; the requests that waited
//! for it go on at the authorize stage.

use super::calls::Owner;
use super::stages::Caller;
use super::{Engine, Step, Wait};
use crate::cache::CacheKey;
use crate::flights::{Job, Parked, Waiter};
use crate::host::{Host, HttpAnswer};
use crate::introspection::{Failure, Found};
use crate::policy;
use crate::token::{self, MayAct, Verified};
use crate::verdict::Verdict;

impl Engine {
    /// Trust for the opaque `subject` at `issuer`: remembered by this worker or another, else
    /// one introspection call per token (joined by concurrent requests). `Err` is the verdict:
    /// a refusal, 502, 503, or a pause for the call.
    pub(super) fn introspected<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        header_actor: Option<&str>,
        key: &CacheKey,
        issuer: usize,
    ) -> Result<Verified, Verdict> {
        self.check_header_actor(host, at, header_actor)?;
        if let Some(v) = self.keys.introspected(key, issuer, at.now) {
            return self.acting(host, at, v);
        }
        let ikey = self.introspection.key(issuer, subject);
        match self.introspection.remembered(host, issuer, &ikey, at.now) {
            Some(Ok(found)) => return self.trusted(host, at, header_actor, *key, issuer, &found),
            Some(Err(failure)) => return Err(self.untrusted(host, at.ctx, subject, failure)),
            None => {}
        }
        let parked = Parked {
            profile: at.profile,
            subject: subject.to_string(),
            header_actor: header_actor.map(str::to_string),
            key: *key,
            verified: None,
        };
        let waiter = Waiter {
            ctx: at.ctx,
            resume: Some(Box::new(parked)),
        };
        let Err(waiter) = self.flights.join(&ikey, waiter) else {
            self.waits.insert(at.ctx, Wait::Flight(ikey));
            token::log_debug(
                host,
                at.ctx,
                subject,
                "waits on the introspection in flight",
            );
            return Err(Verdict::Pause);
        };
        let request = match self.introspection.request(issuer, subject, at.now) {
            Ok(request) => request,
            Err(failure) => return Err(self.untrusted(host, at.ctx, subject, failure)),
        };
        let what = format!("ctx={} introspection", at.ctx);
        let Ok(call) = self
            .calls
            .send(host, Owner::Introspection(ikey), &what, request)
        else {
            return Err(self.untrusted(host, at.ctx, subject, NOT_SENT));
        };
        token::log_debug(host, at.ctx, subject, &format!("introspection call {call}"));
        let job = Job::Introspect {
            issuer,
            token: subject.to_string(),
        };
        self.flights.start(ikey, call, at.carrier, waiter, job);
        self.waits.insert(at.ctx, Wait::Flight(ikey));
        Err(Verdict::Pause)
    }

    /// The requests that waited for introspection call `call` of `issuer`: each goes on at the
    /// authorize stage, or gets the failure's answer.
    pub(super) fn after_introspection<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        ikey: &CacheKey,
        waiters: Vec<Waiter>,
        issuer: usize,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let judged = self
            .introspection
            .on_answer(host, issuer, ikey, answer, now);
        let mut out = Vec::with_capacity(waiters.len());
        for w in waiters {
            let Some(mut parked) = w.resume else {
                continue;
            };
            let at = Step::new(w.ctx, receiver, parked.profile, now);
            let actor = parked.header_actor.as_deref();
            let v = match &judged {
                Ok(found) => match self.trusted(host, at, actor, parked.key, issuer, found) {
                    Ok(v) => {
                        parked.verified = Some(v);
                        self.admit(host, at, Caller::resumed(&parked))
                    }
                    Err(verdict) => verdict,
                },
                Err(failure) => self.untrusted(host, w.ctx, &parked.subject, *failure),
            };
            out.push((w.ctx, v));
        }
        out
    }

    /// The requests of an introspection that could not be sent again.
    pub(super) fn introspection_unsent<H: Host>(
        &mut self,
        host: &H,
        waiters: Vec<Waiter>,
    ) -> Vec<(u32, Verdict)> {
        let v = self.outcomes.untrusted(host, NOT_SENT);
        waiters.into_iter().map(|w| (w.ctx, v.clone())).collect()
    }

    /// A token its issuer called active, as a verification for this request: its claims judged
    /// (policies, claim headers), its `may_act` against the request's actor; remembered by this
    /// worker until the answer's trust ends.
    fn trusted<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        header_actor: Option<&str>,
        key: CacheKey,
        issuer: usize,
        found: &Found,
    ) -> Result<Verified, Verdict> {
        let p = &self.client.profiles[at.profile];
        let client_id = self.client.endpoint(p.service).client_id();
        let may_act = MayAct::from_claim(found.claims.get("may_act"));
        let may_act_ok = p.may_act_permits(&may_act, header_actor, client_id);
        let facts = match self.rules.reads_claims() {
            true => self.rules.judge(&found.claims, &mut |name| {
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
            claims: Some(found.claims.clone()),
        };
        self.keys.remember_introspected(&key, v.clone());
        self.acting(host, at, v)
    }

    /// RFC 8693 §4.4 on an introspected token: its `may_act` must name the request's actor.
    fn acting<H: Host>(&self, host: &H, at: Step, v: Verified) -> Result<Verified, Verdict> {
        let p = &self.client.profiles[at.profile];
        match v.may_act_ok || !(p.enforce_may_act && p.actor.is_some()) {
            true => Ok(v),
            false => Err(self.outcomes.actor_not_allowed(host, at.ctx)),
        }
    }

    /// An opaque token introspection did not make trusted: logged by fingerprint, answered.
    fn untrusted<H: Host>(&self, host: &H, ctx: u32, subject: &str, failure: Failure) -> Verdict {
        let why = format!("not trusted: {}", failure.description());
        token::log_debug(host, ctx, subject, &why);
        self.outcomes.untrusted(host, failure)
    }
}

const NOT_SENT: Failure = Failure::Unavailable("the introspection endpoint could not be called");
