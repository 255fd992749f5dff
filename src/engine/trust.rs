//! The engine's trusted-issuer paths: verifying the subject (once per token and key set) with
//! `may_act`, and the requests that waited for an issuer's keys.

use super::request::{At, Next, Request, Wait};
use super::Engine;
use crate::host::{Host, LogLevel};
use crate::keys::{ActorCheck, Check, Judge, KeyEvent};
use crate::policy::{self, Facts, Rules};
use crate::token::{self, MayAct, Verified};
use crate::verdict::{to_each, Verdict};

/// What a verified token's claims allow and tell; `unwritable` hears each claim that cannot go
/// into its header.
fn judge(rules: &Rules, subject: &str, unwritable: &mut dyn FnMut(&str)) -> Facts {
    if !rules.reads_claims() {
        return Facts::default();
    }
    token::claims(subject).map_or_else(Facts::default, |c| rules.judge(&c, unwritable))
}

impl Engine {
    /// Verifies the subject JWT of `req` (once per token and key set) and applies `may_act`:
    /// a refusal, 503, or a wait while the issuer's keys are fetched again.
    pub(super) fn check_subject<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: &Request,
        may_wait: bool,
    ) -> Next<Option<Verified>> {
        if let Err(verdict) = self.check_header_actor(host, at, req) {
            return Next::Stop(verdict);
        }
        let p = &self.client.profiles[req.profile];
        let client_id = self.client.endpoint(p.service).client_id();
        let permits = |m: &MayAct| p.may_act_permits(m, req.actor(), client_id);
        let rules = &self.rules;
        let claims = |t: &str| judge(rules, t, &mut |name| policy::log_unwritable(host, name));
        let judge = Judge {
            may_act: &permits,
            claims: &claims,
        };
        let enforce = p.enforce_may_act && p.actor.is_some();
        let waiter = may_wait.then_some(req.ctx);
        let subject = req.token();
        match self
            .keys
            .check(host, req.ctx, subject, &req.key, &judge, at.now, waiter)
        {
            Check::Valid(v) if v.may_act_ok || !enforce => Next::Go(Some(v)),
            Check::Valid(_) => Next::Stop(self.outcomes.actor_not_allowed(host, req.ctx)),
            Check::Refused(e) => Next::Stop(self.outcomes.refused_jwt(host, req.ctx, subject, e)),
            // Fetches run every second until the first keys arrive.
            Check::NoKeys => Next::Stop(self.outcomes.no_keys(false)),
            Check::Wait(issuer) => Next::Park(Wait::Keys(issuer)),
        }
    }

    /// A header actor token that is a JWT of a trusted issuer must verify (else 401, or 503
    /// without keys); any other is the STS's to judge.
    pub(super) fn check_header_actor<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: &Request,
    ) -> Result<(), Verdict> {
        let p = &self.client.profiles[req.profile];
        let (Some(actor), Some(_)) = (req.actor(), p.actor_header()) else {
            return Ok(());
        };
        match self.keys.check_actor(actor, at.now) {
            ActorCheck::Verified | ActorCheck::NotTrusted => Ok(()),
            ActorCheck::Refused(e) => Err(self.outcomes.refused_jwt(host, req.ctx, actor, e)),
            ActorCheck::NoKeys => Err(self.outcomes.no_keys(false)),
        }
    }

    /// Requests whose wait for keys is over: checked again with the keys now at hand, or 503.
    pub(super) fn after_keys<H: Host>(
        &mut self,
        host: &H,
        event: KeyEvent,
        now: u64,
    ) -> Vec<(u32, Verdict)> {
        match event {
            KeyEvent::Failed(waiters) => {
                self.resume(&waiters);
                let v = self.outcomes.no_keys(true);
                to_each(waiters.iter().copied(), &v)
            }
            KeyEvent::Resume(waiters) => {
                let mut out = Vec::with_capacity(waiters.len());
                for ctx in waiters {
                    let Some(parked) = self.parked.remove(&ctx) else {
                        continue;
                    };
                    if host.debug_enabled() {
                        let waited = now.saturating_sub(parked.since_ms);
                        let msg = format!("ctx={ctx} resumes after {waited} ms waiting for keys");
                        host.log(LogLevel::Debug, &msg);
                    }
                    // Back at the trust stage; a token still naming an unknown key is refused
                    // now: it does not wait again.
                    let at = At { carrier: None, now };
                    out.push((ctx, self.trust(host, at, parked.request, false)));
                }
                out
            }
        }
    }
}
