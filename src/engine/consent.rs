//! The consent stage (OpenID CIBA): a request that needs the user's consent joins the one asked
//! for its key or claims it; the backchannel requests and polls are sent from the root's tick;
//! the STS's ping is answered here. It owns the consent table.

use super::calls::{Calls, Owner};
use super::request::{At, Next, Request, Wait};
use super::setup::Setup;
use crate::cache::CacheKey;
use crate::config::{CibaMode, Config, ConfigError, Grant, LoginHint};
use crate::consent::{Ask, Asking, ConsentEvent, Consents, Want};
use crate::host::{Host, HttpAnswer, RequestHeaders};
use crate::metrics::Metric;
use crate::path;
use crate::reply::LocalReply;
use crate::token::{self, Extracted, Verified};
use crate::verdict::Verdict;

/// The consent stage of one worker, when `sts.ciba` is configured.
pub(super) struct Consent {
    consents: Consents,
}

/// Whose consent a ciba request needs, and how the STS is told.
pub(super) struct ConsentFor {
    /// The consent's key (and so the cache key of its token).
    pub(super) key: CacheKey,
    /// The `login_hint` (or hint token) of the backchannel request.
    hint: String,
    /// A hash of the subject (issuer and `sub`), for the share of slots it may hold.
    client: [u8; 32],
}

/// The most CIBA claim slots (the table is `cache.max_entries` slots up to this).
const MAX_CONSENT_SLOTS: u32 = 4096;

impl Consent {
    /// The stage for `config`: none without `sts.ciba`.
    pub(super) fn compile(config: &Config) -> Result<Option<Consent>, ConfigError> {
        let Some(ciba) = &config.sts.ciba else {
            return Ok(None);
        };
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id)
            .map_err(|_| ConfigError::new("sts.ciba", "no randomness for a worker id"))?;
        let id = u64::from_be_bytes(id);
        // Every slot is written at start: a large cache must not mean a slow start.
        let slots = config.cache.max_entries.min(MAX_CONSENT_SLOTS);
        let consents = Consents::new(ciba, slots, config.sts.timeout_ms, id);
        Ok(Some(Consent { consents }))
    }

    /// Work at start: the claim slots exist (so that claiming one is a compare-and-swap).
    pub(super) fn prepare<H: Host>(&self, host: &H) {
        self.consents.prepare(host);
    }

    /// The STS's ping (CIBA ping mode) on the notification path: answered here, never routed.
    pub(super) fn notification<H, R>(&self, s: &Setup, host: &H, req: &R) -> Option<Verdict>
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        let Some(CibaMode::Ping { notify_path }) = s.config.sts.ciba.as_ref().map(|c| &c.mode)
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
                Extracted::Token(t) => self.consents.notify(host, t, host.now_ms()),
                _ => false,
            };
        Some(Verdict::Respond(LocalReply::notification(accepted)))
    }

    /// `req` joins the consent of `key`, or claims it (the tick sends the backchannel request).
    pub(super) fn ask<H: Host>(
        &mut self,
        host: &H,
        at: At,
        req: &Request,
        ConsentFor { key, hint, client }: ConsentFor,
    ) -> Next<()> {
        let asking = Asking {
            key,
            client,
            ctx: req.ctx,
            profile: req.profile,
            subject_exp: req.subject_exp(),
            hint,
            trace: req.trace.clone(),
        };
        match self.consents.ask(host, asking, at.now) {
            Ask::Waiting => Next::Park(Wait::Consent(key)),
            Ask::Busy => Next::Stop(Verdict::Respond(LocalReply::consent_pending(
                self.consents.retry_after_s(),
            ))),
        }
    }

    /// The STS's answer to call `call` of the consent of `key`.
    pub(super) fn on_answer<H: Host>(
        &mut self,
        host: &H,
        (key, call): (CacheKey, u32),
        answer: &HttpAnswer,
        now: u64,
    ) -> Option<ConsentEvent> {
        self.consents.on_answer(host, key, call, answer, now)
    }

    /// The consents' periodic work: the calls they want, sent through `calls`; the consents
    /// and waits that ended.
    pub(super) fn tick<H: Host>(
        &mut self,
        (s, calls): (&Setup, &mut Calls),
        host: &H,
        now: u64,
    ) -> Vec<ConsentEvent> {
        let (mut events, wanted) = self.consents.tick(host, now);
        for w in wanted {
            let Some(p) = s.client.profiles.get(w.profile) else {
                continue;
            };
            let endpoint = s.client.endpoint(p.service);
            let (request, metric, what) = match &w.call {
                Want::Backchannel {
                    hint,
                    notification_token,
                    trace,
                } => (
                    p.ciba_request(endpoint, hint, notification_token.as_deref(), now / 1000)
                        .map(|r| r.map(|r| trace.on(r))),
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
            match request.map(|r| calls.send(host, owner, what, r)) {
                Some(Ok(call)) => {
                    host.metric(metric, 1);
                    self.consents.sent(&w.key, call);
                }
                _ => events.extend(self.consents.unsent(host, &w.key, now)),
            }
        }
        events
    }

    /// Request `ctx`, waiting for the consent of `key`, ended.
    pub(super) fn leave(&mut self, ctx: u32, key: &CacheKey) {
        self.consents.leave(ctx, key);
    }

    /// The `retry-after` (s) of a request still waiting for a consent.
    pub(super) fn retry_after_s(&self) -> u64 {
        self.consents.retry_after_s()
    }
}

/// The consent `req` needs when its route's grant is ciba; `Err` is its 401 when its token
/// names no user.
pub(super) fn needed<H: Host>(
    s: &Setup,
    host: &H,
    req: &Request,
) -> Result<Option<ConsentFor>, Verdict> {
    if s.client.profiles[req.profile].grant != Grant::Ciba {
        return Ok(None);
    }
    consent_for(s, req.profile, req.token(), req.verified.as_ref())
        .map(Some)
        .ok_or_else(|| {
            s.outcomes
                .invalid_token(host, "token names no user for consent")
        })
}

/// The consent key, `login_hint` and client of a ciba request: with a claim as the hint, the
/// user (issuer, `sub` and the claim's value: two subjects never share a consent) and
/// everything that shapes the token; else the token itself.
fn consent_for(
    s: &Setup,
    profile: usize,
    subject: &str,
    verified: Option<&Verified>,
) -> Option<ConsentFor> {
    let p = &s.client.profiles[profile];
    let named = |name: &str| match verified.and_then(|v| Some((v, v.claims.as_deref()?))) {
        // An introspected token: the answer's claims, its issuer when it names none.
        Some((v, claims)) => {
            let issuer = s.config.trusted_issuers.get(v.issuer);
            token::named_user(claims, name, issuer.map(|t| t.issuer.as_str()))
        }
        None => token::claim_of(subject, name),
    };
    match s.config.sts.ciba.as_ref().map(|c| &c.login_hint) {
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
            let who = named("sub").map_or_else(String::new, |u| format!("{}\n{}", u.iss, u.sub));
            Some(ConsentFor {
                key: p.cache_key(subject, None),
                hint: subject.to_string(),
                client: sha256(&who),
            })
        }
    }
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).into()
}
