//! The engine's CIBA paths: a request that needs the user's consent joins or starts one, the
//! STS's ping is answered, and a consent's end becomes verdicts for the requests that waited.

use super::calls::Owner;
use super::request::{At, Request, Wait};
use super::{serve, Engine, UNAVAILABLE};
use crate::cache::{CacheKey, Cached};
use crate::config::{CibaMode, LoginHint};
use crate::consent::{Ask, Asking, ConsentEvent, ConsentWaiter, Want};
use crate::freshness::Served;
use crate::host::{Host, RequestHeaders};
use crate::metrics::Metric;
use crate::path;
use crate::policy::Facts;
use crate::reply::LocalReply;
use crate::sts;
use crate::token::{self, Extracted, Verified};
use crate::verdict::{to_each, Verdict};

/// Whose consent a ciba request needs, and how the STS is told.
pub(super) struct ConsentFor {
    /// The consent's key (and so the cache key of its token).
    pub(super) key: CacheKey,
    /// The `login_hint` (or hint token) of the backchannel request.
    hint: String,
    /// A hash of the subject (issuer and `sub`), for the share of slots it may hold.
    client: [u8; 32],
}

/// The contexts of the requests that waited for a consent.
fn contexts(waiters: &[ConsentWaiter]) -> Vec<u32> {
    waiters.iter().map(|w| w.ctx).collect()
}

/// What a request's verified claims tell (the claim headers).
fn facts_of(req: &Request) -> Option<&Facts> {
    req.verified.as_ref().map(|v| &v.facts)
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).into()
}

impl Engine {
    /// The STS's ping (CIBA ping mode) on the notification path: answered here, never routed.
    pub(super) fn notification<H, R>(&self, host: &H, req: &R) -> Option<Verdict>
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        let consents = self.consents.as_ref()?;
        let Some(CibaMode::Ping { notify_path }) = self.config.sts.ciba.as_ref().map(|c| &c.mode)
        else {
            return None;
        };
        let raw = req.header(":path")?;
        if path::normalize(&raw).path != notify_path.as_str() {
            return None;
        }
        let bearer = req.header("authorization");
        let accepted = req.header(":method").as_deref() == Some("POST")
            && match token::extract(bearer.as_deref(), "Bearer ", 256) {
                Extracted::Token(t) => consents.notify(host, t, host.now_ms()),
                _ => false,
            };
        Some(Verdict::Respond(LocalReply::notification(accepted)))
    }

    /// The consent key, `login_hint` and client of a ciba request: with a claim as the hint,
    /// the user (issuer, `sub` and the claim's value: two subjects never share a consent) and
    /// everything that shapes the token; else the token itself.
    pub(super) fn consent_key(
        &self,
        profile: usize,
        subject: &str,
        verified: Option<&Verified>,
    ) -> Option<ConsentFor> {
        let p = &self.client.profiles[profile];
        let named = |name: &str| match verified.and_then(|v| Some((v, v.claims.as_deref()?))) {
            // An introspected token: the answer's claims, its issuer when it names none.
            Some((v, claims)) => {
                let issuer = self.config.trusted_issuers.get(v.issuer);
                token::named_user(claims, name, issuer.map(|t| t.issuer.as_str()))
            }
            None => token::claim_of(subject, name),
        };
        match self.config.sts.ciba.as_ref().map(|c| &c.login_hint) {
            Some(LoginHint::Claim(name)) => {
                let user = named(name)?;
                let who = format!("{}\n{}", user.iss, user.sub);
                let key = p.cache_key(&format!("{who}\n{}", user.value), None);
                Some(ConsentFor {
                    key,
                    hint: user.value,
                    client: sha256(&who),
                })
            }
            _ => {
                let who =
                    named("sub").map_or_else(String::new, |u| format!("{}\n{}", u.iss, u.sub));
                Some(ConsentFor {
                    key: p.cache_key(subject, None),
                    hint: subject.to_string(),
                    client: sha256(&who),
                })
            }
        }
    }

    /// Joins the consent for `key`, or claims it (the tick sends the backchannel request).
    pub(super) fn ask_consent<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: Request,
        ConsentFor { key, hint, client }: ConsentFor,
        subject_exp: Option<u64>,
    ) -> Verdict {
        let Some(consents) = self.consents.as_mut() else {
            return self.outcomes.failure(host, &UNAVAILABLE);
        };
        let asking = Asking {
            key,
            client,
            ctx: req.ctx,
            profile: req.profile,
            subject_exp,
            hint,
        };
        match consents.ask(host, asking, at.now) {
            Ask::Waiting => self.park(req, Wait::Consent(key), at.now),
            Ask::Busy => Verdict::Respond(LocalReply::consent_pending(consents.retry_after_s())),
        }
    }

    /// The consents' periodic work on the root: the calls they want, sent through the one
    /// counted path, and verdicts for requests whose wait ended.
    pub(super) fn consent_tick<H: Host>(&mut self, host: &H, now: u64) -> Vec<(u32, Verdict)> {
        let Some(consents) = self.consents.as_mut() else {
            return Vec::new();
        };
        let (mut events, wanted) = consents.tick(host, now);
        for w in wanted {
            let Some(p) = self.client.profiles.get(w.profile) else {
                continue;
            };
            let endpoint = self.client.endpoint(p.service);
            let (request, metric, what) = match &w.call {
                Want::Backchannel {
                    hint,
                    notification_token,
                } => (
                    p.ciba_request(endpoint, hint, notification_token.as_deref(), now / 1000),
                    Metric::CibaRequests,
                    "backchannel request",
                ),
                Want::Poll { auth_req_id } => (
                    Some(p.ciba_poll(endpoint, auth_req_id, now / 1000)),
                    Metric::CibaPolls,
                    "CIBA poll",
                ),
            };
            let owner = Owner::Consent(w.key);
            match request.map(|r| self.calls.send(host, owner, what, r)) {
                Some(Ok(call)) => {
                    host.metric(metric, 1);
                    consents.sent(&w.key, call);
                }
                _ => events.extend(consents.unsent(host, &w.key, now)),
            }
        }
        let mut out = Vec::new();
        for event in events {
            out.extend(self.after_consent(host, event, now));
        }
        out
    }

    /// What the requests that waited for a consent get.
    pub(super) fn after_consent<H: Host>(
        &mut self,
        host: &H,
        event: ConsentEvent,
        now: u64,
    ) -> Vec<(u32, Verdict)> {
        let rules = &self.config.cache;
        let retry = self.consents.as_ref().map_or(1, |c| c.retry_after_s());
        match event {
            ConsentEvent::Approved {
                key,
                minted,
                subject_exp,
                waiters,
            } => {
                let token = Cached::Token(minted.access_token.clone());
                let outcome = Ok(minted);
                let entry = sts::cache_entry(rules, &outcome, subject_exp, None, now);
                let kept = entry.map(|(v, until)| {
                    self.cache.put(host, &key, until, &v);
                    Served {
                        key,
                        expires_at_ms: until,
                    }
                });
                let requests = self.resume(&contexts(&waiters));
                let mut out = Vec::with_capacity(requests.len());
                for r in &requests {
                    let parts = (&self.outcomes, &mut self.freshness);
                    let answer = (&token, kept);
                    out.push((
                        r.ctx,
                        serve(parts, host, &[r.ctx], answer, r.token(), facts_of(r)),
                    ));
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
                self.resume(&contexts(&waiters));
                let o = &self.outcomes;
                waiters
                    .into_iter()
                    .map(|w| (w.ctx, o.failure(host, &failure)))
                    .collect()
            }
            ConsentEvent::Settled { key, waiters } => {
                let entry = self.cache.get(host, &key, now);
                let requests = self.resume(&contexts(&waiters));
                let mut out = Vec::with_capacity(requests.len());
                for r in &requests {
                    let v = match &entry {
                        Some((hit, until)) => {
                            let served = Served {
                                key,
                                expires_at_ms: *until,
                            };
                            let parts = (&self.outcomes, &mut self.freshness);
                            let answer = (hit, Some(served));
                            serve(parts, host, &[r.ctx], answer, r.token(), facts_of(r))
                        }
                        None => Verdict::Respond(LocalReply::consent_pending(retry)),
                    };
                    out.push((r.ctx, v));
                }
                out
            }
            ConsentEvent::TimedOut(waiters) => {
                self.resume(&contexts(&waiters));
                let v = Verdict::Respond(LocalReply::consent_pending(retry));
                to_each(waiters.iter().map(|w| w.ctx), &v)
            }
        }
    }
}
