//! Keeping minted tokens fresh, in the exchange stage: a hit inside the refresh window queues
//! one background exchange (claimed across workers) that replaces the entry before it expires,
//! and an upstream 401 about a request's minted token evicts that token, here and in every
//! worker's memo.

use super::exchange::{exchange_job, served, Exchanges};
use super::request::{At, Request};
use super::setup::Setup;
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

impl Exchanges {
    /// A worker-memo hit inside the refresh window: another worker may have refreshed the
    /// shared entry already (then this memo takes it); else this worker may start the refresh.
    /// Either way the request is served at once.
    pub(super) fn hot_memo_hit<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        (ctx, profile): (u32, usize),
        subject: Subject,
        mut hit: Remembered,
    ) -> Verdict {
        let newer = self.cache.get(host, &hit.key, at.now);
        if let Some((value, until)) = newer.filter(|(_, until)| *until > hit.expires_at_ms) {
            (hit.value, hit.expires_at_ms) = (value, until);
            self.memo.put(profile, subject.token(), hit.clone(), at.now);
        } else {
            let req = Request {
                ctx,
                profile,
                subject,
                header_actor: None,
                key: hit.key,
                verified: hit.verified.clone(),
                dpop: None,
                peer_certificate: None,
                trace: Default::default(),
            };
            self.refresh_ahead(s, host, at, &req, served(&hit));
            return self.serve_hit(s, host, ctx, &hit, req.token());
        }
        self.serve_hit(s, host, ctx, &hit, subject.token())
    }

    /// Request `ctx` served from memo entry `hit`.
    fn serve_hit<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        ctx: u32,
        hit: &Remembered,
        subject: &str,
    ) -> Verdict {
        let answer = (&hit.value, Some(served(hit)));
        let verified = hit.verified.as_ref();
        s.serve(
            &mut self.freshness,
            host,
            &[ctx],
            answer,
            (subject, verified),
        )
    }

    /// Starts the refresh of `entry`, the hot entry (of a minted token) `req` was served,
    /// unless it cannot outlive the entry (a consent, a subject or actor expiring first), one is
    /// in the air, or another worker claimed it. The root sends it on its next tick.
    pub(super) fn refresh_ahead<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        at: At,
        req: &Request,
        entry: Served,
    ) {
        let p = &s.client.profiles[req.profile];
        let key = entry.key;
        if p.grant == Grant::Ciba || self.flights.contains(&key) {
            return;
        }
        // The actor's own token not at hand: the entry expires as usual.
        let actor = self.actor_for(s, host, req.profile, req.actor(), None, at.now);
        let Ok(actor) = actor else {
            return;
        };
        let rules = &s.config.cache;
        let cap = cache::latest_expiry_ms(rules, req.subject_exp(), actor.1, at.now);
        if cap.is_none_or(|c| c <= entry.expires_at_ms) {
            // Already as long as the subject or actor allows: a refresh could not extend it.
            return;
        }
        if !self.freshness.claim(host, &key, at.now) {
            return;
        }
        let job = Job::Exchange(Box::new(exchange_job(s, req, actor, true)));
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

    /// The upstream answered request `ctx` with `status` (`challenges`: its `WWW-Authenticate`
    /// values, read only for a 401). A 401 about a minted token (no error code, or
    /// `invalid_token`) evicts it from the shared cache and from every worker's memo, so the
    /// next request exchanges anew; a challenge asking for more evicts nothing, and a key is
    /// evicted at most once a minute across workers (the 401s still reach the client as sent).
    pub(super) fn on_response<H: Host>(
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

    /// On the tick: drops the memo's expired entries, and its copies of tokens other workers
    /// evicted. An empty memo has none to drop and reads nothing (it starts over from the
    /// log's next read).
    pub(super) fn tick<H: Host>(&mut self, host: &H, now: u64) {
        self.memo.sweep(now);
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
