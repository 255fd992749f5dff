//! What an exchange's answer becomes. In a two-hop chain (identity chaining, ID-JAG), a first
//! hop's token sends the same flight on as the second hop at its own token service, sent that
//! token alone; the waiters get the last hop's answer, never the first's, and it is cached for
//! the shorter of the hops' lifetimes.

use super::{serve, Engine, Owner, UNAVAILABLE};
use crate::cache::{self, CacheKey, Cached};
use crate::config::ACCESS_TOKEN_TYPE;
use crate::endpoint::NoRandomness;
use crate::flights::{Exchange, FirstHop, Job};
use crate::freshness::Served;
use crate::host::{Host, HttpAnswer, HttpCall, LogLevel};
use crate::memo::Remembered;
use crate::metrics::Metric;
use crate::sts::{self, Minted, StsFailure};
use crate::token;
use crate::verdict::Verdict;

/// What became of an answer at a chain's first hop.
pub(super) enum Hop {
    /// The second hop is in the air for the same waiters.
    Sent,
    /// The answer decides the flight: a last hop's, or a first hop's failure.
    Done(Result<Minted, StsFailure>),
}

impl Engine {
    /// Reads an exchange's answer with the profile of the hop that was asked.
    pub(super) fn judge_hop(
        &self,
        x: &Exchange,
        answer: &HttpAnswer,
    ) -> Result<Minted, StsFailure> {
        let p = &self.client.profiles[x.profile];
        match (&x.first_hop, &p.then) {
            (Some(_), Some(then)) => then.judge(answer, None),
            _ => p.judge(answer, x.actor_sub.as_deref()),
        }
    }

    /// A first hop's token goes on to the second hop (carried by the context the answer came
    /// to); `waiters` move to that flight. Anything else is [`Hop::Done`].
    pub(super) fn next_hop<H: Host>(
        &mut self,
        host: &H,
        (receiver, key, now): (Option<u32>, CacheKey, u64),
        x: &Exchange,
        judged: Result<Minted, StsFailure>,
        waiters: &mut Vec<u32>,
    ) -> Hop {
        let first = x.first_hop.is_none() && self.client.profiles[x.profile].then.is_some();
        let minted = match judged {
            Ok(m) if first => m,
            other => return Hop::Done(other),
        };
        let rules = &self.config.cache;
        let until = cache::token_expiry_ms(
            rules,
            minted.expires_in,
            x.subject_exp,
            x.actor_until_ms,
            now,
        );
        let p = &self.client.profiles[x.profile];
        let issued_type = minted
            .issued_token_type
            .or_else(|| p.requested_token_type.clone())
            .unwrap_or_else(|| ACCESS_TOKEN_TYPE.to_string());
        let mut second = x.clone();
        second.first_hop = Some(Box::new(FirstHop {
            token: minted.access_token,
            issued_type,
            // A first hop's token too short-lived to keep still makes one chain answer.
            until_ms: until.unwrap_or(now),
        }));
        let request = self.second_hop_request(&second, now);
        let sent = self
            .calls
            .send(host, Owner::Flight(key), "second hop", request);
        let service = p.then.as_ref().map_or(0, |t| t.service);
        self.count_service(host, service, sent.is_ok());
        let Ok(call) = sent else {
            return Hop::Done(Err(UNAVAILABLE));
        };
        let waiting = std::mem::take(waiters);
        self.flights
            .relaunch(key, call, receiver, waiting, Job::Exchange(second));
        Hop::Sent
    }

    /// The token service of the hop of `x` that is in the air.
    pub(super) fn hop_service(&self, x: &Exchange) -> usize {
        let p = &self.client.profiles[x.profile];
        let hop = p.then.as_deref().filter(|_| x.first_hop.is_some());
        hop.unwrap_or(p).service
    }

    /// The second hop's request of a chain whose first hop answered.
    pub(super) fn second_hop_request(
        &self,
        x: &Exchange,
        now: u64,
    ) -> Result<HttpCall, NoRandomness> {
        let p = &self.client.profiles[x.profile];
        match (&p.then, &x.first_hop) {
            (Some(then), Some(hop)) => {
                let endpoint = self.client.endpoint(then.service);
                then.hop_request(endpoint, &hop.token, &hop.issued_type, now / 1000)
            }
            // Not a chain: the first hop's own request (never reached).
            _ => p.request(
                self.client.endpoint(p.service),
                &x.subject,
                None,
                now / 1000,
            ),
        }
    }

    /// Decides on an exchange's judged answer (a chain's last): cache it (token or remembered
    /// rejection, never outliving a first hop's token) and say what its `waiters` get. A
    /// refresh ahead that failed caches nothing: the entry it would replace stays.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_exchange_answer<H: Host>(
        &mut self,
        host: &H,
        call: u32,
        key: &CacheKey,
        x: &Exchange,
        waiters: &[u32],
        judged: Result<Minted, StsFailure>,
        now: u64,
    ) -> Verdict {
        let rules = &self.config.cache;
        let first_until = x.first_hop.as_ref().map(|h| h.until_ms);
        let cap = match (x.actor_until_ms, first_until) {
            (Some(a), Some(f)) => Some(a.min(f)),
            (a, f) => a.or(f),
        };
        let entry = match (&judged, x.refresh) {
            (Err(failure), true) => {
                self.refresh_failed(host, key, &format!("STS call {call}: {failure}"));
                None
            }
            _ => sts::cache_entry(rules, &judged, x.subject_exp, cap, now),
        };
        let life = entry.as_ref().map_or(0, |(_, until)| until - now);
        let kept = entry.as_ref().map(|(_, until)| Served {
            key: *key,
            expires_at_ms: *until,
        });
        if let Some((value, until)) = entry {
            if x.refresh {
                host.metric(Metric::RefreshedAhead, 1);
                // The next refresh is the new entry's; one already inside the window (a token
                // shorter-lived than the window) is left to expire.
                let next = if self.freshness.due(until, now) {
                    until
                } else {
                    now
                };
                self.freshness.retry_at(host, key, next);
            }
            self.keep(host, key, x, value, until);
        }
        match judged {
            Ok(minted) => {
                if host.debug_enabled() {
                    let fp = token::fingerprint(&x.subject);
                    let msg = format!("STS call {call} token={fp} minted, cached for {life} ms");
                    host.log(LogLevel::Debug, &msg);
                }
                let parts = (&self.outcomes, &mut self.freshness);
                let token = Cached::Token(minted.access_token);
                let facts = x.verified.as_ref().map(|v| &v.facts);
                serve(parts, host, waiters, (&token, kept), &x.subject, facts)
            }
            Err(failure) => {
                if failure.rejection().is_none() && !self.config.token_services.is_empty() {
                    let n = u8::try_from(self.hop_service(x)).unwrap_or(u8::MAX);
                    host.metric(Metric::ServiceErrors(n), 1);
                }
                if x.refresh && waiters.is_empty() {
                    // Nobody to answer: counted and logged as a failed call.
                    let outage = failure.rejection().is_none();
                    host.metric(Metric::StsErrors, u64::from(outage));
                    return Verdict::Pause;
                }
                self.outcomes
                    .exchange_failed(host, call, &failure, waiters.len())
            }
        }
    }

    /// Writes an answer to the shared cache and, where it may, to the worker memo.
    fn keep<H: Host>(&mut self, host: &H, key: &CacheKey, x: &Exchange, value: Cached, until: u64) {
        self.cache.put(host, key, until, &value);
        if x.rememberable {
            let now = host.now_ms();
            let remembered = Remembered {
                value,
                key: *key,
                expires_at_ms: until,
                verified: x.verified.clone(),
            };
            self.memo.put(x.profile, &x.subject, remembered, now);
        }
    }
}
