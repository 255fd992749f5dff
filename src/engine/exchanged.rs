//! What an answer becomes, in the exchange stage. In a two-hop chain (identity chaining,
//! ID-JAG), a first hop's token sends the same flight on as the second hop at its own token
//! service, sent that token alone; the waiters get the last hop's answer, never the first's,
//! and it is cached for the shorter of the hops' lifetimes. A consent's end is cached and
//! served here too.

use super::calls::{Calls, Owner};
use super::exchange::{hop_service, second_hop_request, Exchanges};
use super::request::Request;
use super::setup::Setup;
use super::UNAVAILABLE;
use crate::cache::{self, CacheKey, Cached};
use crate::config::ACCESS_TOKEN_TYPE;
use crate::consent::ConsentEvent;
use crate::flights::{Exchange, FirstHop, Job};
use crate::freshness::Served;
use crate::host::{Host, HttpAnswer, LogLevel};
use crate::memo::Remembered;
use crate::metrics::Metric;
use crate::reply::LocalReply;
use crate::sts::{self, Minted, StsFailure};
use crate::token;
use crate::verdict::{to_each, Verdict};

/// What became of an answer at a chain's first hop.
enum Hop {
    /// The second hop is in the air for the same waiters.
    Sent,
    /// The answer decides the flight: a last hop's, or a first hop's failure.
    Done(Result<Minted, StsFailure>),
}

impl Exchanges {
    /// The answer to exchange call `call` of the flight `key` that `waiters` wait on (carried by
    /// `receiver`): the waiters and their verdict, or `None` when a chain's second hop went on
    /// for them.
    pub(super) fn answered<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        (receiver, call): (Option<u32>, u32),
        ((key, x), mut waiters): ((CacheKey, Exchange), Vec<u32>),
        answer: &HttpAnswer,
    ) -> Option<(Vec<u32>, Verdict)> {
        let now = host.now_ms();
        let judged = judge_hop(s, &x, answer);
        let at = (receiver, key, now);
        let judged = match self.next_hop((s, calls), host, at, &x, judged, &mut waiters) {
            Hop::Sent => return None,
            Hop::Done(judged) => judged,
        };
        let v = self.decide(s, host, (call, &key), &x, &waiters, judged, now);
        Some((waiters, v))
    }

    /// The answer to the filter's own actor-token call `call` of actor profile `actor`: the
    /// token, cached for the next requests, or the verdict of those that waited for it.
    pub(super) fn actor_answered<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        (call, actor): (u32, usize),
        answer: &HttpAnswer,
        now: u64,
    ) -> Result<String, Verdict> {
        let a = &s.client.actors[actor];
        self.actors
            .on_answer(host, a, call, answer, now)
            .map_err(|failure| s.outcomes.actor_failed(host, call, &failure))
    }

    /// A first hop's token goes on to the second hop (carried by the context the answer came
    /// to); `waiters` move to that flight. Anything else is [`Hop::Done`].
    fn next_hop<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        (receiver, key, now): (Option<u32>, CacheKey, u64),
        x: &Exchange,
        judged: Result<Minted, StsFailure>,
        waiters: &mut Vec<u32>,
    ) -> Hop {
        let p = &s.client.profiles[x.profile];
        let first = x.first_hop.is_none() && p.then.is_some();
        let minted = match judged {
            Ok(m) if first => m,
            other => return Hop::Done(other),
        };
        let rules = &s.config.cache;
        let until = cache::token_expiry_ms(
            rules,
            minted.expires_in,
            x.subject_exp,
            x.actor_until_ms,
            now,
        );
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
        let request = second_hop_request(s, &second, now).map(|r| second.trace.on(r));
        let sent = calls.send(host, Owner::Flight(key), "second hop", request);
        let service = p.then.as_ref().map_or(0, |t| t.service);
        s.count_service(host, service, sent.is_ok());
        let Ok(call) = sent else {
            return Hop::Done(Err(UNAVAILABLE));
        };
        let waiting = std::mem::take(waiters);
        self.flights.relaunch(
            key,
            call,
            receiver,
            waiting,
            Job::Exchange(Box::new(second)),
        );
        Hop::Sent
    }

    /// Decides on an exchange's judged answer (a chain's last): cache it (token or remembered
    /// rejection, never outliving a first hop's token) and say what its `waiters` get. A
    /// refresh ahead that failed caches nothing: the entry it would replace stays.
    #[allow(clippy::too_many_arguments)]
    fn decide<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        (call, key): (u32, &CacheKey),
        x: &Exchange,
        waiters: &[u32],
        judged: Result<Minted, StsFailure>,
        now: u64,
    ) -> Verdict {
        let rules = &s.config.cache;
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
                let token = Cached::Token(minted.access_token);
                let verified = x.verified.as_ref();
                let answer = (&token, kept);
                s.serve(
                    &mut self.freshness,
                    host,
                    waiters,
                    answer,
                    (&x.subject, verified),
                )
            }
            Err(failure) => {
                if failure.rejection().is_none() && !s.config.token_services.is_empty() {
                    let n = u8::try_from(hop_service(s, x)).unwrap_or(u8::MAX);
                    host.metric(Metric::ServiceErrors(n), 1);
                }
                if x.refresh && waiters.is_empty() {
                    // Nobody to answer: counted and logged as a failed call.
                    let outage = failure.rejection().is_none();
                    host.metric(Metric::StsErrors, u64::from(outage));
                    return Verdict::Pause;
                }
                s.outcomes
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

    /// What the `requests` that waited for a consent get when it ended as `event`: the token
    /// cached and served, the refusal remembered, the other worker's outcome read from the
    /// cache, or 503 with `retry-after` (`retry` s) while it goes on.
    pub(super) fn consented<H: Host>(
        &mut self,
        s: &Setup,
        host: &H,
        event: ConsentEvent,
        requests: &[Request],
        (retry, now): (u64, u64),
    ) -> Vec<(u32, Verdict)> {
        let rules = &s.config.cache;
        match event {
            ConsentEvent::Approved {
                key,
                minted,
                subject_exp,
                ..
            } => {
                let token = Cached::Token(minted.access_token.clone());
                let entry = sts::cache_entry(rules, &Ok(minted), subject_exp, None, now);
                let kept = entry.map(|(v, until)| {
                    self.cache.put(host, &key, until, &v);
                    Served {
                        key,
                        expires_at_ms: until,
                    }
                });
                let mut out = Vec::with_capacity(requests.len());
                for r in requests {
                    let answer = (&token, kept);
                    let subject = (r.token(), r.verified.as_ref());
                    let v = s.serve(&mut self.freshness, host, &[r.ctx], answer, subject);
                    out.push((r.ctx, v));
                }
                out
            }
            ConsentEvent::Refused {
                key,
                failure,
                subject_exp,
                waiters,
            } => {
                let outcome = Err(failure.clone());
                if let Some((v, until)) = sts::cache_entry(rules, &outcome, subject_exp, None, now)
                {
                    self.cache.put(host, &key, until, &v);
                }
                let v = s.outcomes.failure(host, &failure);
                waiters.iter().map(|w| (w.ctx, v.clone())).collect()
            }
            ConsentEvent::Settled { key, .. } => {
                let entry = self.cache.get(host, &key, now);
                let mut out = Vec::with_capacity(requests.len());
                for r in requests {
                    let v = match &entry {
                        Some((hit, until)) => {
                            let served = Served {
                                key,
                                expires_at_ms: *until,
                            };
                            let subject = (r.token(), r.verified.as_ref());
                            let answer = (hit, Some(served));
                            s.serve(&mut self.freshness, host, &[r.ctx], answer, subject)
                        }
                        None => Verdict::Respond(LocalReply::consent_pending(retry)),
                    };
                    out.push((r.ctx, v));
                }
                out
            }
            ConsentEvent::TimedOut(waiters) => {
                let v = Verdict::Respond(LocalReply::consent_pending(retry));
                to_each(waiters.iter().map(|w| w.ctx), &v)
            }
        }
    }
}

/// Reads an exchange's answer with the profile of the hop that was asked.
fn judge_hop(s: &Setup, x: &Exchange, answer: &HttpAnswer) -> Result<Minted, StsFailure> {
    let p = &s.client.profiles[x.profile];
    match (&x.first_hop, &p.then) {
        (Some(_), Some(then)) => then.judge(answer, None),
        _ => p.judge(answer, x.actor_sub.as_deref()),
    }
}
