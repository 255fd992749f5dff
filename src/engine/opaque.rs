//! The trust stage for opaque tokens (RFC 7662): introspected at the issuer the route names,
//! the answer shared across workers, one call per token per worker; the requests that waited
//! for it go on at the authorize stage.

use super::calls::Owner;
use super::request::{At, Next, Request, Wait};
use super::Engine;
use crate::cache::CacheKey;
use crate::flights::Job;
use crate::host::{Host, HttpAnswer};
use crate::introspection::{Failure, Found};
use crate::policy;
use crate::token::{self, MayAct, Verified};
use crate::verdict::Verdict;

impl Engine {
    /// Trust for the opaque subject of `req` at `issuer`: remembered by this worker or
    /// another, else one introspection call per token (joined by concurrent requests): the
    /// verification, a refusal, 502, 503, or a wait for the call.
    pub(super) fn introspected<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: &Request,
        issuer: usize,
    ) -> Next<Option<Verified>> {
        if let Err(verdict) = self.check_header_actor(host, at, req) {
            return Next::Stop(verdict);
        }
        if let Some(v) = self.keys.introspected(&req.key, issuer, at.now) {
            return self.acting(host, req, v);
        }
        let subject = req.token();
        let ikey = self.introspection.key(issuer, subject);
        match self.introspection.remembered(host, issuer, &ikey, at.now) {
            Some(Ok(found)) => return self.trusted(host, req, issuer, &found),
            Some(Err(failure)) => return Next::Stop(self.untrusted(host, req, failure)),
            None => {}
        }
        if self.flights.join(&ikey, req.ctx) {
            let what = "waits on the introspection in flight";
            token::log_debug(host, req.ctx, subject, what);
            return Next::Park(Wait::Introspection(ikey));
        }
        let request = match self.introspection.request(issuer, subject, at.now) {
            Ok(request) => request,
            Err(failure) => return Next::Stop(self.untrusted(host, req, failure)),
        };
        let what = format!("ctx={} introspection", req.ctx);
        let Ok(call) = self
            .calls
            .send(host, Owner::Introspection(ikey), &what, request)
        else {
            return Next::Stop(self.untrusted(host, req, NOT_SENT));
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

    /// The requests that waited for introspection call `call` of `issuer`: each goes on at the
    /// authorize stage, or gets the failure's answer.
    pub(super) fn after_introspection<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        ikey: &CacheKey,
        waiters: Vec<u32>,
        issuer: usize,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let judged = self
            .introspection
            .on_answer(host, issuer, ikey, answer, now);
        let at = At {
            carrier: receiver,
            now,
        };
        let mut out = Vec::with_capacity(waiters.len());
        for mut req in self.resume(&waiters) {
            let ctx = req.ctx;
            let v = match &judged {
                Ok(found) => match self.trusted(host, &req, issuer, found) {
                    Next::Go(v) => {
                        req.verified = v;
                        self.authorize(host, at, req)
                    }
                    Next::Stop(verdict) => verdict,
                    Next::Park(wait) => self.park(req, wait, now),
                },
                Err(failure) => self.untrusted(host, &req, *failure),
            };
            out.push((ctx, v));
        }
        out
    }

    /// A token its issuer called active, as a verification for `req`: its claims judged
    /// (policies, claim headers), its `may_act` against the request's actor; remembered by this
    /// worker, under that issuer, until the answer's trust ends.
    fn trusted<H: Host>(
        &mut self,
        host: &H,
        req: &Request,
        issuer: usize,
        found: &Found,
    ) -> Next<Option<Verified>> {
        let p = &self.client.profiles[req.profile];
        let client_id = self.client.endpoint(p.service).client_id();
        let may_act = MayAct::from_claim(found.claims.get("may_act"));
        let may_act_ok = p.may_act_permits(&may_act, req.actor(), client_id);
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
        self.keys.remember_introspected(&req.key, v.clone());
        self.acting(host, req, v)
    }

    /// RFC 8693 §4.4 on an introspected token: its `may_act` must name the request's actor.
    fn acting<H: Host>(&self, host: &H, req: &Request, v: Verified) -> Next<Option<Verified>> {
        let p = &self.client.profiles[req.profile];
        match v.may_act_ok || !(p.enforce_may_act && p.actor.is_some()) {
            true => Next::Go(Some(v)),
            false => Next::Stop(self.outcomes.actor_not_allowed(host, req.ctx)),
        }
    }

    /// An opaque token introspection did not make trusted: logged by fingerprint, answered.
    fn untrusted<H: Host>(&self, host: &H, req: &Request, failure: Failure) -> Verdict {
        let why = format!("not trusted: {}", failure.description());
        token::log_debug(host, req.ctx, req.token(), &why);
        self.outcomes.untrusted(host, failure)
    }
}

/// Why an introspection a request waits on was never made.
pub(super) const NOT_SENT: Failure =
    Failure::Unavailable("the introspection endpoint could not be called");
