//! The engine's trusted-issuer paths: verifying the subject (once per token and key set) with
//! `may_act`, and the requests that waited for an issuer's keys.

use super::{Engine, Step, Wait};
use crate::cache::CacheKey;
use crate::host::{Host, LogLevel};
use crate::keys::{ActorCheck, Check, Judge, KeyEvent, KeyWaiter};
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
    /// Verifies the subject JWT (once per token and key set) and applies `may_act`. `Err` is the
    /// verdict: a refusal, 503, or a pause while the issuer's keys are fetched again.
    pub(super) fn check_subject<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        subject: &str,
        actor: Option<&str>,
        key: &CacheKey,
        may_wait: bool,
    ) -> Result<Verified, Verdict> {
        self.check_header_actor(host, at, actor)?;
        let p = &self.client.profiles[at.profile];
        let client_id = self.client.endpoint(p.service).client_id();
        let permits = |m: &MayAct| p.may_act_permits(m, actor, client_id);
        let rules = &self.rules;
        let claims = |t: &str| judge(rules, t, &mut |name| policy::log_unwritable(host, name));
        let judge = Judge {
            may_act: &permits,
            claims: &claims,
        };
        let enforce = p.enforce_may_act && p.actor.is_some();
        let waiter = || KeyWaiter {
            ctx: at.ctx,
            profile: at.profile,
            subject: subject.to_string(),
            actor: actor.map(str::to_string),
            since_ms: at.now,
        };
        match self.keys.check(
            host,
            at.ctx,
            subject,
            key,
            &judge,
            at.now,
            may_wait.then_some(waiter),
        ) {
            Check::Valid(v) if v.may_act_ok || !enforce => Ok(v),
            Check::Valid(_) => Err(self.outcomes.actor_not_allowed(host, at.ctx)),
            Check::Refused(e) => Err(self.outcomes.refused_jwt(host, at.ctx, subject, e)),
            // Fetches run every second until the first keys arrive.
            Check::NoKeys => Err(self.outcomes.no_keys(false)),
            Check::Wait(issuer) => {
                self.waits.insert(at.ctx, Wait::Keys(issuer));
                Err(Verdict::Pause)
            }
        }
    }

    /// A header actor token that is a JWT of a trusted issuer must verify (else 401, or 503
    /// without keys); any other is the STS's to judge.
    pub(super) fn check_header_actor<H: Host>(
        &mut self,
        host: &H,
        at: Step,
        actor: Option<&str>,
    ) -> Result<(), Verdict> {
        let p = &self.client.profiles[at.profile];
        let (Some(actor), Some(_)) = (actor, p.actor_header()) else {
            return Ok(());
        };
        match self.keys.check_actor(actor, at.now) {
            ActorCheck::Verified | ActorCheck::NotTrusted => Ok(()),
            ActorCheck::Refused(e) => Err(self.outcomes.refused_jwt(host, at.ctx, actor, e)),
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
                let v = self.outcomes.no_keys(true);
                to_each(waiters.iter().map(|w| w.ctx), &v)
            }
            KeyEvent::Resume(waiters) => {
                let mut out = Vec::with_capacity(waiters.len());
                for w in waiters {
                    if host.debug_enabled() {
                        let waited = now.saturating_sub(w.since_ms);
                        let msg =
                            format!("ctx={} resumes after {waited} ms waiting for keys", w.ctx);
                        host.log(LogLevel::Debug, &msg);
                    }
                    // Back at the trust stage; a token still naming an unknown key is refused
                    // now: it does not wait again.
                    let at = Step::new(w.ctx, None, w.profile, now);
                    let v = self.trust(host, at, &w.subject, w.actor.as_deref(), false);
                    out.push((w.ctx, v));
                }
                out
            }
        }
    }
}
