//! One request as the engine carries it from stage to stage, and where it waits when it must:
//! a parked request is kept as this record alone, and resumes at its stage from it.

use super::extract::Credentials;
use super::setup::Setup;
use crate::cache::CacheKey;
use crate::caller::{DpopRequest, Subject, TraceContext};
use crate::host::{Host, LogLevel};
use crate::policy::Facts;
use crate::token::{self, Verified};
use crate::verdict::Verdict;

/// A request past its route and credentials.
#[derive(Debug)]
pub(super) struct Request {
    /// Its context.
    pub(super) ctx: u32,
    /// Its exchange profile (the route's).
    pub(super) profile: usize,
    /// Its subject token, in the header value it was cut from.
    pub(super) subject: Subject,
    /// A header actor token it came with.
    pub(super) header_actor: Option<String>,
    /// The exchange's cache key.
    pub(super) key: CacheKey,
    /// What the trust stage found: the subject's verification, with trusted issuers.
    pub(super) verified: Option<Verified>,
    /// With the DPoP scheme: its proof and what the proof must name.
    pub(super) dpop: Option<Box<DpopRequest>>,
    /// The digest of the connection's client certificate (hex), read when an issuer's tokens
    /// may be bound to one.
    pub(super) peer_certificate: Option<String>,
    /// Its trace context, for the calls made for it.
    pub(super) trace: TraceContext,
}

impl Request {
    /// The record of request `ctx` on `profile`, with its cache key (both spellings of an ES256
    /// token share one) and no verification yet.
    pub(super) fn new(
        s: &Setup,
        c: Credentials,
        (peer_certificate, trace): (Option<String>, TraceContext),
    ) -> Request {
        let p = &s.client.profiles[c.profile];
        let canonical = token::canonical(c.subject.token());
        let key = p.cache_key(&canonical, c.actor.as_deref());
        Request {
            ctx: c.ctx,
            profile: c.profile,
            subject: c.subject,
            header_actor: c.actor,
            key,
            verified: None,
            dpop: c.dpop,
            peer_certificate,
            trace,
        }
    }

    /// Whether the worker memo may answer for its token later: no header actor (the memo
    /// keys on the token alone), and a token presented and verified as a plain bearer token
    /// (a bound one is checked on every request).
    pub(super) fn memo_may_hold(&self) -> bool {
        self.header_actor.is_none()
            && self.dpop.is_none()
            && !self.verified.as_ref().is_some_and(|v| v.binding.is_bound())
    }

    /// The subject token.
    pub(super) fn token(&self) -> &str {
        self.subject.token()
    }

    /// What its verified claims tell (the policies that hold, the claim headers' values).
    pub(super) fn facts(&self) -> Option<&Facts> {
        self.verified.as_ref().map(|v| &v.facts)
    }

    /// The header actor token, if it came with one.
    pub(super) fn actor(&self) -> Option<&str> {
        self.header_actor.as_deref()
    }

    /// The subject's `exp` (seconds), capping what is cached for it: the verified one, else
    /// the one a JWT claims (read only to shorten a lifetime).
    pub(super) fn subject_exp(&self) -> Option<u64> {
        self.verified
            .as_ref()
            .map(|v| v.exp)
            .or_else(|| token::unverified_exp(self.token()))
    }
}

/// When a stage runs: the context that would carry a call it starts (`None`: the root), and
/// the time.
#[derive(Debug, Clone, Copy)]
pub(super) struct At {
    pub(super) carrier: Option<u32>,
    pub(super) now: u64,
}

/// What a stage says of a request: go on with what it found, stop with a verdict, or wait.
pub(super) enum Next<T> {
    /// Go on to the next stage with this.
    Go(T),
    /// The request is answered.
    Stop(Verdict),
    /// The request waits here.
    Park(Wait),
}

/// Where a parked request waits, and so the stage it resumes at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Trust, for a fetch of this trusted issuer's keys: checked again.
    Keys(usize),
    /// Trust, for the introspection of this key: goes on at authorize.
    Introspection(CacheKey),
    /// Exchange, for the filter's actor token of this key: exchanges with it.
    Actor(CacheKey),
    /// The answer of the exchange in flight for this key.
    Flight(CacheKey),
    /// The user's consent for this key.
    Consent(CacheKey),
}

/// A parked request: the record, where it waits, and since when.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) request: Request,
    pub(super) wait: Wait,
    pub(super) since_ms: u64,
}

impl Parked {
    /// A debug line: the request goes on at `now_ms` after its wait.
    pub(super) fn log_resumed<H: Host>(&self, host: &H, now_ms: u64) {
        if host.debug_enabled() {
            let waited = now_ms.saturating_sub(self.since_ms);
            let msg = format!("ctx={} resumes after {waited} ms waiting", self.request.ctx);
            host.log(LogLevel::Debug, &msg);
        }
    }
}
