//! Keeping minted tokens fresh: a hit inside the refresh window queues one background exchange
//! (claimed across workers) that replaces the entry before it expires, and an upstream 401 to a
//! request that carried a minted token evicts that token, here and in every worker's memo.

use super::request::{At, Request};
use super::{serve, Engine};
use crate::cache::{self, CacheKey};
use crate::caller::Subject;
use crate::challenge;
use crate::config::Grant;
use crate::flights::Job;
use crate::freshness::{News, Served};
use crate::host::{Host, LogLevel};
use crate::memo::Remembered;
use crate::metrics::Metric;
use crate::token;
use crate::verdict::Verdict;

impl Engine {
    /// A worker-memo hit inside the refresh window: another worker may have refreshed the
    /// shared entry already (then this memo takes it); else this worker may start the refresh.
    /// Either way the request is served at once.
    pub(super) fn hot_memo_hit<H: Host>(
        &mut self,
        host: &H,
        at: At,
        (ctx, profile): (u32, usize),
        subject: Subject,
        mut hit: Remembered,
    ) -> Verdict {
        let newer = self.cache.get(host, &hit.key, at.now);
        match newer.filter(|(_, until)| *until > hit.expires_at_ms) {
            Some((value, until)) => {
                (hit.value, hit.expires_at_ms) = (value, until);
                self.memo.put(profile, subject.token(), hit.clone(), at.now);
            }
            None => {
                let req = Request {
                    ctx,
                    profile,
                    subject,
                    header_actor: None,
                    key: hit.key,
                    verified: hit.verified.clone(),
                };
                self.refresh_ahead(host, at, &req, served(&hit));
                let parts = (&self.outcomes, &mut self.freshness);
                let facts = hit.verified.as_ref().map(|v| &v.facts);
                let answer = (&hit.value, Some(served(&hit)));
                return serve(parts, host, &[ctx], answer, req.token(), facts);
            }
        }
        let parts = (&self.outcomes, &mut self.freshness);
        let facts = hit.verified.as_ref().map(|v| &v.facts);
        let answer = (&hit.value, Some(served(&hit)));
        serve(parts, host, &[ctx], answer, subject.token(), facts)
    }

    /// Starts the refresh of `entry`, the hot entry (of a minted token) `req` was served,
    /// unless it cannot outlive the entry (a consent, a subject or actor expiring first), one is
    /// in the air, or another worker claimed it. The root sends it on its next tick.
    pub(super) fn refresh_ahead<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: &Request,
        entry: Served,
    ) {
        let p = &self.client.profiles[req.profile];
        let key = entry.key;
        if p.grant == Grant::Ciba || self.flights.contains(&key) {
            return;
        }
        // The actor's own token not at hand: the entry expires as usual.
        let Ok(actor) = self.actor_for(host, req.profile, req.actor(), None, at.now) else {
            return;
        };
        let rules = &self.config.cache;
        let cap = cache::latest_expiry_ms(rules, req.subject_exp(), actor.1, at.now);
        if cap.is_none_or(|c| c <= entry.expires_at_ms) {
            // Already as long as the subject or actor allows: a refresh could not extend it.
            return;
        }
        if !self.freshness.claim(host, &key, at.now) {
            return;
        }
        let job = Job::Exchange(self.exchange_job(req, actor, true));
        self.flights.queue(key, job);
        token::log_debug(host, req.ctx, req.token(), "refresh ahead queued");
    }

    /// A refresh that produced no token: the entry stays until its own expiry, and no worker
    /// tries again for a second.
    pub(super) fn refresh_failed<H: Host>(&self, host: &H, key: &CacheKey, why: &str) {
        let now = host.now_ms();
        self.freshness
            .retry_at(host, key, now.saturating_add(crate::freshness::RETRY_MS));
        let msg = format!("refresh ahead failed, the entry serves until it expires: {why}");
        host.log(LogLevel::Warn, &msg);
    }

    /// Whether request `ctx` carries a minted token, so that its answer's status matters.
    pub fn watches(&self, ctx: u32) -> bool {
        self.freshness.watches(ctx)
    }

    /// The upstream answered request `ctx` with `status` (`challenges`: its `WWW-Authenticate`
    /// values, read only for a 401). A 401 about a minted token (no error code, or
    /// `invalid_token`) evicts it from the shared cache and from every worker's memo, so the
    /// next request exchanges anew; a challenge asking for more evicts nothing, and a key is
    /// evicted at most once a minute across workers (the 401s still reach the client as sent).
    pub fn on_response<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        status: Option<u16>,
        challenges: impl FnOnce() -> Vec<String>,
    ) {
        let Some(served) = self.freshness.take(ctx) else {
            return;
        };
        if status != Some(401)
            || !challenge::about_the_token(challenges().iter().map(String::as_str))
        {
            return;
        }
        if !self.freshness.may_evict(host, &served.key, host.now_ms()) {
            host.metric(Metric::EvictionHeld, 1);
            return;
        }
        self.cache.evict(host, &served.key, served.expires_at_ms);
        self.memo.evict(&served.key, served.expires_at_ms);
        if self.freshness.publish(host, served) {
            host.metric(Metric::EvictedOn401, 1);
            if host.debug_enabled() {
                let msg = format!("ctx={ctx} upstream answered 401: minted token evicted");
                host.log(LogLevel::Debug, &msg);
            }
        }
    }

    /// On the tick: drops the memo's copies of tokens other workers evicted. An empty memo has
    /// none to drop and reads nothing (it starts over from the log's next read).
    pub(super) fn apply_evictions<H: Host>(&mut self, host: &H) {
        if self.memo.is_empty() {
            self.freshness.restart_log();
            return;
        }
        match self.freshness.news(host) {
            News::Evicted(list) => {
                for e in list {
                    self.memo.evict(&e.key, e.expires_at_ms);
                }
            }
            News::Missed => self.memo.clear(),
        }
    }
}

/// The entry a memo hit serves.
pub(super) fn served(hit: &Remembered) -> Served {
    Served {
        key: hit.key,
        expires_at_ms: hit.expires_at_ms,
    }
}
