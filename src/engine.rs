//! The request state machine, per worker: request headers in → a verdict (continue with header
//! edits, pause, or answer); a callout answer or a tick in → verdicts for the requests that
//! waited. Nothing here touches proxy-wasm: the host is reached through [`Host`].

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::cache::{self, CacheKey, Cached};
use crate::config::{Config, KeySource, OnMissingToken, OnStsUnavailable, RouteAction};
use crate::host::{Host, HttpAnswer, HttpCall, LogLevel, RequestHeaders};
use crate::jwks::{KeySet, Schedule};
use crate::metrics::Metric;
use crate::reply::LocalReply;
use crate::route;
use crate::sts::{self, ActorSource, IssuedType, StsFailure};
use crate::token::{self, Extracted, JwtCheck, JwtError};

/// Verified subject tokens remembered per worker before the memo is cleared.
const MAX_VERIFIED: usize = 10_000;

/// One change to the request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Set the header to this value, replacing any copy.
    Set(String, String),
    /// Remove every copy of the header.
    Remove(String),
}

/// What the proxy should do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply the header changes in order, then route the request.
    Continue(Vec<HeaderOp>),
    /// Hold the request until the engine hands out a verdict for it.
    Pause,
    /// Answer the client with this response.
    Respond(LocalReply),
}

/// An STS call in progress and the requests waiting on it (single flight).
struct Flight {
    /// The callout's token; `None` when the context that carried it went away and the root has
    /// to dispatch it again.
    call: Option<u32>,
    /// The context whose callout it is (its answer is lost with it); `None` for the root.
    carrier: Option<u32>,
    started_ms: u64,
    job: Job,
}

/// What an STS call is for.
enum Job {
    /// A token exchange; `members` get its token.
    Exchange {
        members: Vec<u32>,
        profile: usize,
        subject: String,
        subject_exp: Option<u64>,
        /// The actor token sent, for a delegation (a re-dispatch sends it again, or the
        /// filter's current one).
        actor_token: Option<String>,
        /// When the actor's token stops being good (ms); caps the cache lifetime.
        actor_until_ms: Option<u64>,
        /// With `expect_act`: the `sub` the minted token's `act` must name.
        actor_sub: Option<String>,
        /// No header actor: the answer may go into the first-level cache.
        rememberable: bool,
    },
    /// The filter's own client-credentials call for actor `actor`; `parked` requests go on
    /// with its token.
    Actor { actor: usize, parked: Vec<Parked> },
}

/// A request waiting for the filter's actor token.
struct Parked {
    ctx: u32,
    profile: usize,
    subject: String,
}

/// An exchange call that answered, with what deciding on its answer needs.
struct Exchange {
    call: u32,
    key: CacheKey,
    profile: usize,
    subject: String,
    subject_exp: Option<u64>,
    actor_until_ms: Option<u64>,
    actor_sub: Option<String>,
    rememberable: bool,
    waiting: usize,
}

impl Flight {
    /// The requests waiting on this call.
    fn waiting(&self) -> Vec<u32> {
        match &self.job {
            Job::Exchange { members, .. } => members.clone(),
            Job::Actor { parked, .. } => parked.iter().map(|p| p.ctx).collect(),
        }
    }

    fn forget(&mut self, ctx: u32) {
        match &mut self.job {
            Job::Exchange { members, .. } => members.retain(|m| *m != ctx),
            Job::Actor { parked, .. } => parked.retain(|p| p.ctx != ctx),
        }
    }
}

/// A request waiting for its issuer's keys to be fetched again (its `kid` was unknown).
struct KeyWaiter {
    ctx: u32,
    profile: usize,
    subject: String,
    actor: Option<String>,
    since_ms: u64,
}

/// A remote key set: how to fetch it and where workers share it.
struct RemoteKeys {
    call: HttpCall,
    schedule: Schedule,
    /// Shared-data key of the last good set: fetch time (8 bytes) + the JWKS document.
    keys_slot: String,
    /// Shared-data key of the last fetch attempt by any worker: start time (8 bytes) + failed.
    attempt_slot: String,
    /// This worker's fetch in flight and when it started.
    fetching: Option<(u32, u64)>,
}

/// A trusted issuer's keys as this worker sees them.
struct IssuerState {
    remote: Option<RemoteKeys>,
    keys: Option<KeySet>,
    /// Fetch time of `keys` (ms); 0 for inline keys.
    version: u64,
    /// A token named a key not in the set: fetch early (rate-limited).
    unknown_kid: bool,
    waiters: Vec<KeyWaiter>,
}

/// A subject token that verified, remembered so a hot token is verified once.
#[derive(Clone, Copy)]
struct Verified {
    issuer: usize,
    version: u64,
    exp: u64,
    /// The token's `may_act` (if any) names this request's actor.
    may_act_ok: bool,
}

/// An answer this worker remembers (first-level cache).
struct MemoEntry {
    value: Cached,
    expires_at_ms: u64,
    verified: Option<Verified>,
}

/// The last fetch attempt any worker made for one issuer.
#[derive(Clone, Copy, Default)]
struct Attempt {
    at: Option<u64>,
    failed: bool,
    cas: Option<u32>,
}

/// The per-worker filter state: the configuration, STS calls and key fetches in progress.
pub struct Engine {
    config: Config,
    flights: HashMap<CacheKey, Flight>,
    calls: HashMap<u32, CacheKey>,
    members: HashMap<u32, CacheKey>,
    carried: HashMap<u32, Vec<CacheKey>>,
    issuers: Vec<IssuerState>,
    jwks_calls: HashMap<u32, usize>,
    key_waiters: HashMap<u32, usize>,
    verified: HashMap<CacheKey, Verified>,
    memo: Vec<HashMap<Box<str>, MemoEntry>>,
}

impl Engine {
    /// An engine for a validated configuration.
    pub fn new(config: Config) -> Self {
        let issuers = config.trusted_issuers.iter().map(issuer_state).collect();
        let memo = config.profiles.iter().map(|_| HashMap::new()).collect();
        Engine {
            config,
            flights: HashMap::new(),
            calls: HashMap::new(),
            members: HashMap::new(),
            carried: HashMap::new(),
            issuers,
            jwks_calls: HashMap::new(),
            key_waiters: HashMap::new(),
            verified: HashMap::new(),
            memo,
        }
    }

    /// Decides what to do with a request whose headers just arrived.
    pub fn on_request<H, R>(&mut self, host: &H, ctx: u32, req: &R) -> Verdict
    where
        H: Host,
        R: RequestHeaders + ?Sized,
    {
        host.metric(Metric::Requests, 1);
        let profile = match route::select(&self.config.routes, req) {
            RouteAction::Bypass => {
                host.metric(Metric::Bypassed, 1);
                return Verdict::Continue(self.strip_ops());
            }
            RouteAction::Exchange(p) => p,
        };
        let cfg = &self.config;
        // Envoy folds repeated `authorization` headers into one comma-joined value (which fails
        // the token format); other headers arrive as copies, so those are read as a whole.
        let value = if cfg.subject_token.header == "authorization" {
            req.header(&cfg.subject_token.header)
        } else {
            match req.single_header(&cfg.subject_token.header) {
                Ok(v) => v,
                Err(()) => {
                    host.metric(Metric::Rejected, 1);
                    return Verdict::Respond(LocalReply::invalid_token(
                        &cfg.realm,
                        "more than one token header",
                    ));
                }
            }
        };
        let subject = match token::extract(
            value.as_deref(),
            &cfg.subject_token.prefix,
            cfg.subject_token.max_bytes,
        ) {
            Extracted::Token(t) => t,
            Extracted::Missing => {
                return match cfg.on_missing_token {
                    OnMissingToken::Allow => Verdict::Continue(self.strip_ops()),
                    OnMissingToken::Reject => {
                        host.metric(Metric::Rejected, 1);
                        Verdict::Respond(LocalReply::missing_token(&cfg.realm))
                    }
                };
            }
            Extracted::Malformed(why) => {
                host.metric(Metric::Rejected, 1);
                if host.debug_enabled() {
                    host.log(
                        LogLevel::Debug,
                        &format!("ctx={ctx} malformed token: {why}"),
                    );
                }
                return Verdict::Respond(LocalReply::invalid_token(&cfg.realm, why));
            }
        };
        let actor = match self.config.profiles[profile]
            .actor
            .as_ref()
            .map(|a| &a.source)
        {
            Some(ActorSource::Header(name)) => {
                // Two actor tokens: which one the STS and the upstream would see is a guess.
                let value = req.single_header(name);
                let max = cfg.subject_token.max_bytes;
                match value
                    .as_ref()
                    .map(|v| token::extract(v.as_deref(), "", max))
                {
                    Ok(Extracted::Token(t)) => Some(t.to_string()),
                    _ => {
                        host.metric(Metric::Rejected, 1);
                        return Verdict::Respond(LocalReply::invalid_token(
                            &cfg.realm,
                            "actor token missing or malformed",
                        ));
                    }
                }
            }
            _ => None,
        };
        let now = host.now_ms();
        self.proceed(
            host,
            ctx,
            Some(ctx),
            profile,
            subject,
            actor.as_deref(),
            now,
        )
    }

    /// The request from the subject check on: verify (if issuers are trusted), cache lookup,
    /// then join or start an STS call carried by `carrier` (`None`: the root context). `actor` is
    /// the actor token when the request has it already (from a header, or just fetched).
    #[allow(clippy::too_many_arguments)]
    fn proceed<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        carrier: Option<u32>,
        profile: usize,
        subject: &str,
        actor: Option<&str>,
        now: u64,
    ) -> Verdict {
        let p = &self.config.profiles[profile];
        let header_actor = match p.actor.as_ref().map(|a| &a.source) {
            Some(ActorSource::Header(_)) => actor,
            _ => None,
        };
        if header_actor.is_none() {
            if let Some(v) = self.memo_hit(host, ctx, profile, subject, now) {
                return v;
            }
        }
        let key = p.cache_key(subject, header_actor);
        let verified_exp = if self.config.trusted_issuers.is_empty() {
            None
        } else {
            match self.check_subject(host, ctx, profile, subject, actor, &key, now) {
                Ok(exp) => Some(exp),
                Err(verdict) => return verdict,
            }
        };

        let slot = cache::slot_name(&key, self.config.cache.max_entries);
        if let Some((hit, expires_at)) = host
            .shared_get(&slot)
            .and_then(|(s, _)| cache::lookup(&s, &key, now))
        {
            host.metric(Metric::CacheHits, 1);
            if host.debug_enabled() {
                let fp = token::fingerprint(subject);
                host.log(LogLevel::Debug, &format!("ctx={ctx} token={fp} cache hit"));
            }
            let verdict = self.cached_verdict(host, &hit, subject);
            if header_actor.is_none() {
                let verified = self.verified.get(&key).copied();
                self.remember(profile, subject, hit, expires_at, verified);
            }
            return verdict;
        }
        host.metric(Metric::CacheMisses, 1);

        if let Some(Flight {
            job: Job::Exchange { members, .. },
            ..
        }) = self.flights.get_mut(&key)
        {
            members.push(ctx);
            self.members.insert(ctx, key);
            host.metric(Metric::Coalesced, 1);
            if host.debug_enabled() {
                let fp = token::fingerprint(subject);
                host.log(
                    LogLevel::Debug,
                    &format!("ctx={ctx} token={fp} waits on the STS call in flight"),
                );
            }
            return Verdict::Pause;
        }

        let p = &self.config.profiles[profile];
        let skew_ms = self.config.cache.expiry_skew_s.saturating_mul(1000);
        let (actor_token, actor_until_ms) = match p.actor.as_ref().map(|a| &a.source) {
            None => (None, None),
            Some(ActorSource::Header(_)) => {
                let until = actor
                    .and_then(token::unverified_exp)
                    .map(|exp| exp.saturating_mul(1000).saturating_sub(skew_ms));
                (actor.map(str::to_string), until)
            }
            Some(ActorSource::ClientCredentials(ai)) => {
                match (actor, self.cached_actor(host, *ai, now)) {
                    (Some(t), Some((c, until))) if c == t => (Some(c), Some(until)),
                    // Just fetched but too short-lived to cache: used once, never cached.
                    (Some(t), _) => (Some(t.to_string()), Some(now)),
                    (None, Some((c, until))) => (Some(c), Some(until)),
                    (None, None) => {
                        return self.park_for_actor(host, ctx, carrier, profile, subject, *ai, now)
                    }
                }
            }
        };
        let p = &self.config.profiles[profile];
        let actor_sub = if p.expect_act {
            actor_token
                .as_deref()
                .and_then(token::unverified_sub)
                .or_else(|| match p.actor.as_ref().map(|a| &a.source) {
                    Some(ActorSource::ClientCredentials(_)) => {
                        self.config.endpoint.client_id().map(str::to_string)
                    }
                    _ => None,
                })
        } else {
            None
        };
        let request = p.request(
            &self.config.endpoint,
            subject,
            actor_token.as_deref(),
            now / 1000,
        );
        let call = match self.send(host, ctx, "STS call", request) {
            Ok(sent) => sent,
            Err(verdict) => return verdict,
        };
        if host.debug_enabled() {
            let fp = token::fingerprint(subject);
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} token={fp} cache miss, STS call {call}"),
            );
        }
        let job = Job::Exchange {
            members: vec![ctx],
            profile,
            subject: subject.to_string(),
            subject_exp: verified_exp.or_else(|| token::unverified_exp(subject)),
            actor_token,
            actor_until_ms,
            actor_sub,
            rememberable: header_actor.is_none(),
        };
        self.start_flight(key, call, carrier, now, job);
        self.members.insert(ctx, key);
        Verdict::Pause
    }

    /// The first-level cache: this worker's memory of recent answers, consulted before any
    /// hashing or host call. Entries keep their shared-data expiry and, with trusted issuers,
    /// the verification they rest on (a key-set change or the token's `exp` voids them).
    fn memo_hit<H: Host>(
        &self,
        host: &H,
        ctx: u32,
        profile: usize,
        subject: &str,
        now: u64,
    ) -> Option<Verdict> {
        let m = self.memo.get(profile)?.get(subject)?;
        if now >= m.expires_at_ms {
            return None;
        }
        if !self.config.trusted_issuers.is_empty() {
            let v = m.verified?;
            let leeway = self.config.trusted_issuers.get(v.issuer)?.leeway_s;
            if self.issuers.get(v.issuer)?.version != v.version
                || now / 1000 >= v.exp.saturating_add(leeway)
            {
                return None;
            }
        }
        host.metric(Metric::CacheHits, 1);
        if host.debug_enabled() {
            let fp = token::fingerprint(subject);
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} token={fp} cache hit (worker)"),
            );
        }
        Some(self.cached_verdict(host, &m.value, subject))
    }

    fn cached_verdict<H: Host>(&self, host: &H, value: &Cached, subject: &str) -> Verdict {
        match value {
            Cached::Token(minted) => Verdict::Continue(self.success_ops(minted, subject)),
            Cached::Rejected(failure) => self.failure_verdict(host, failure),
        }
    }

    /// Puts an answer into the first-level cache; a full table is emptied (bounded memory).
    fn remember(
        &mut self,
        profile: usize,
        subject: &str,
        value: Cached,
        expires_at_ms: u64,
        verified: Option<Verified>,
    ) {
        if !self.config.trusted_issuers.is_empty() && verified.is_none() {
            return;
        }
        let cap = self.config.cache.max_entries as usize;
        let Some(map) = self.memo.get_mut(profile) else {
            return;
        };
        if map.len() >= cap {
            map.clear();
        }
        map.insert(
            subject.into(),
            MemoEntry {
                value,
                expires_at_ms,
                verified,
            },
        );
    }

    fn remember_exchange(&mut self, x: &Exchange, value: Cached, expires_at_ms: u64) {
        if x.rememberable {
            let verified = self.verified.get(&x.key).copied();
            self.remember(x.profile, &x.subject, value, expires_at_ms, verified);
        }
    }

    /// Dispatches a freshly built call to the STS; when it cannot be sent, the request's
    /// verdict is the outage answer.
    fn send<H: Host>(
        &self,
        host: &H,
        ctx: u32,
        what: &str,
        request: Result<HttpCall, sts::NoRandomness>,
    ) -> Result<u32, Verdict> {
        let sent = request
            .map_err(|_| "no randomness for the client assertion".to_string())
            .and_then(|r| host.dispatch(&r).map_err(|e| e.0));
        match sent {
            Ok(sent) => {
                host.metric(Metric::StsCalls, 1);
                Ok(sent)
            }
            Err(why) => {
                host.metric(Metric::StsErrors, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("ctx={ctx} {what} not dispatched: {why}"),
                );
                Err(self
                    .failure_verdict(host, &StsFailure::Unavailable("token service unavailable")))
            }
        }
    }

    fn start_flight(&mut self, key: CacheKey, call: u32, carrier: Option<u32>, now: u64, job: Job) {
        self.flights.insert(
            key,
            Flight {
                call: Some(call),
                carrier,
                started_ms: now,
                job,
            },
        );
        self.calls.insert(call, key);
        if let Some(c) = carrier {
            self.carried.entry(c).or_default().push(key);
        }
    }

    /// The filter's cached actor token for client-credentials actor `actor`, if still good, and
    /// when its entry expires (ms).
    fn cached_actor<H: Host>(&self, host: &H, actor: usize, now: u64) -> Option<(String, u64)> {
        let key = &self.config.actors[actor].key;
        let slot = cache::slot_name(key, self.config.cache.max_entries);
        match host
            .shared_get(&slot)
            .and_then(|(s, _)| cache::lookup(&s, key, now))
        {
            Some((Cached::Token(t), until)) => Some((t, until)),
            _ => None,
        }
    }

    /// Parks a request until the filter's actor token arrives; one call per actor at a time.
    #[allow(clippy::too_many_arguments)]
    fn park_for_actor<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        carrier: Option<u32>,
        profile: usize,
        subject: &str,
        actor: usize,
        now: u64,
    ) -> Verdict {
        let key = self.config.actors[actor].key;
        let parked = Parked {
            ctx,
            profile,
            subject: subject.to_string(),
        };
        if let Some(Flight {
            job: Job::Actor { parked: list, .. },
            ..
        }) = self.flights.get_mut(&key)
        {
            list.push(parked);
            self.members.insert(ctx, key);
            return Verdict::Pause;
        }
        let request = self.config.actors[actor].request(&self.config.endpoint, now / 1000);
        let call = match self.send(host, ctx, "actor token call", request) {
            Ok(sent) => sent,
            Err(verdict) => return verdict,
        };
        if host.debug_enabled() {
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} fetches the actor token, STS call {call}"),
            );
        }
        let job = Job::Actor {
            actor,
            parked: vec![parked],
        };
        self.start_flight(key, call, carrier, now, job);
        self.members.insert(ctx, key);
        Verdict::Pause
    }

    /// Verifies the subject JWT against the trusted issuers, once per token and key set.
    /// `Ok(exp)` lets the request go on; `Err` is the verdict (refusal, 503, or a pause while the
    /// issuer's keys are fetched again).
    #[allow(clippy::too_many_arguments)]
    fn check_subject<H: Host>(
        &mut self,
        host: &H,
        ctx: u32,
        profile: usize,
        subject: &str,
        actor: Option<&str>,
        key: &CacheKey,
        now: u64,
    ) -> Result<u64, Verdict> {
        let now_s = now / 1000;
        if let Some(v) = self.verified.get(key) {
            let leeway = self.config.trusted_issuers[v.issuer].leeway_s;
            if self.issuers[v.issuer].version == v.version && now_s < v.exp.saturating_add(leeway) {
                let (exp, ok) = (v.exp, v.may_act_ok);
                return self.check_may_act(host, ctx, profile, ok).map(|()| exp);
            }
        }
        let issuers = &self.issuers;
        let check = token::verify_jwt(
            subject,
            &self.config.trusted_issuers,
            |i| issuers.get(i).and_then(|s| s.keys.as_ref()),
            now_s,
        );
        match check {
            JwtCheck::Valid {
                issuer,
                exp,
                may_act,
            } => {
                if host.debug_enabled() {
                    let fp = token::fingerprint(subject);
                    host.log(LogLevel::Debug, &format!("ctx={ctx} token={fp} verified"));
                }
                if self.verified.len() >= MAX_VERIFIED {
                    self.verified.clear();
                }
                let p = &self.config.profiles[profile];
                let may_act_ok = match p.actor.as_ref().map(|a| &a.source) {
                    None => true,
                    Some(ActorSource::Header(_)) => {
                        let (sub, iss) = actor.map(token::unverified_identity).unwrap_or_default();
                        may_act.permits(sub.as_deref(), iss.as_deref())
                    }
                    Some(ActorSource::ClientCredentials(_)) => {
                        may_act.permits(self.config.endpoint.client_id(), None)
                    }
                };
                let version = self.issuers[issuer].version;
                self.verified.insert(
                    *key,
                    Verified {
                        issuer,
                        version,
                        exp,
                        may_act_ok,
                    },
                );
                self.check_may_act(host, ctx, profile, may_act_ok)
                    .map(|()| exp)
            }
            JwtCheck::Invalid(e) => Err(self.refuse_jwt(host, ctx, subject, e)),
            // Fetches run every second until the first keys arrive.
            JwtCheck::NoKeys(_) => Err(Verdict::Respond(LocalReply::unavailable(
                "signing keys of the token issuer are not available yet",
            ))),
            JwtCheck::UnknownKey(i) => {
                if !self.may_refetch(host, i, now) {
                    return Err(self.refuse_jwt(host, ctx, subject, JwtError::UnknownKey));
                }
                let state = &mut self.issuers[i];
                state.unknown_kid = true;
                state.waiters.push(KeyWaiter {
                    ctx,
                    profile,
                    subject: subject.to_string(),
                    actor: actor.map(str::to_string),
                    since_ms: now,
                });
                self.key_waiters.insert(ctx, i);
                if host.debug_enabled() {
                    let fp = token::fingerprint(subject);
                    host.log(
                        LogLevel::Debug,
                        &format!("ctx={ctx} token={fp} waits for fresh signing keys"),
                    );
                }
                Err(Verdict::Pause)
            }
        }
    }

    /// RFC 8693 §4.4: a delegation whose actor the subject token's `may_act` does not name is
    /// refused before any STS call (unless the profile turns the check off).
    fn check_may_act<H: Host>(
        &self,
        host: &H,
        ctx: u32,
        profile: usize,
        may_act_ok: bool,
    ) -> Result<(), Verdict> {
        let p = &self.config.profiles[profile];
        if may_act_ok || !p.enforce_may_act || p.actor.is_none() {
            return Ok(());
        }
        host.metric(Metric::Rejected, 1);
        if host.debug_enabled() {
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} actor not named in the token's may_act"),
            );
        }
        Err(Verdict::Respond(LocalReply::forbidden(
            &self.config.realm,
            "the token does not allow this actor to act for its subject (may_act)",
        )))
    }

    fn refuse_jwt<H: Host>(&self, host: &H, ctx: u32, subject: &str, e: JwtError) -> Verdict {
        host.metric(Metric::Rejected, 1);
        host.metric(Metric::InvalidToken(e), 1);
        if host.debug_enabled() {
            let fp = token::fingerprint(subject);
            host.log(
                LogLevel::Debug,
                &format!("ctx={ctx} token={fp} refused: {}", e.description()),
            );
        }
        Verdict::Respond(LocalReply::invalid_token(
            &self.config.realm,
            e.description(),
        ))
    }

    /// Whether a token with an unknown `kid` should wait for a fetch: one is due (rate limit
    /// permitting) or already in progress in some worker.
    fn may_refetch<H: Host>(&self, host: &H, issuer: usize, now: u64) -> bool {
        let state = &self.issuers[issuer];
        let Some(remote) = &state.remote else {
            return false;
        };
        if remote.fetching.is_some() {
            return true;
        }
        let attempt = read_attempt(host, &remote.attempt_slot);
        let in_progress = attempt.at.is_some_and(|at| {
            !attempt.failed
                && at > state.version
                && now.saturating_sub(at) <= remote.call.timeout_ms + 1000
        });
        in_progress
            || remote.schedule.due(
                now,
                state.keys.as_ref().map(|_| state.version),
                attempt.at,
                attempt.failed,
                true,
            )
    }

    /// Handles the answer to callout `call` (an STS call or a key fetch) and returns a verdict
    /// for every request that waited on it.
    pub fn on_http_answer<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        if let Some(issuer) = self.jwks_calls.remove(&call) {
            return self.on_jwks_answer(host, issuer, answer);
        }
        let Some(key) = self.calls.remove(&call) else {
            return Vec::new();
        };
        let Some(flight) = self.flights.remove(&key) else {
            return Vec::new();
        };
        for m in flight.waiting() {
            self.members.remove(&m);
        }
        let now = host.now_ms();
        host.metric(Metric::StsLatencyMs, now.saturating_sub(flight.started_ms));
        match flight.job {
            Job::Exchange {
                members,
                profile,
                subject,
                subject_exp,
                actor_until_ms,
                actor_sub,
                rememberable,
                ..
            } => {
                let exchange = Exchange {
                    call,
                    key,
                    profile,
                    subject,
                    subject_exp,
                    actor_until_ms,
                    actor_sub,
                    rememberable,
                    waiting: members.len(),
                };
                let verdict = self.on_exchange_answer(host, &exchange, answer, now);
                members.into_iter().map(|m| (m, verdict.clone())).collect()
            }
            Job::Actor { actor, parked } => {
                self.on_actor_answer(host, receiver, call, actor, parked, answer, now)
            }
        }
    }

    fn on_exchange_answer<H: Host>(
        &mut self,
        host: &H,
        x: &Exchange,
        answer: &HttpAnswer,
        now: u64,
    ) -> Verdict {
        let cfg = &self.config;
        let p = &cfg.profiles[x.profile];
        let issued = if p.expects_issued_type() {
            IssuedType::Required(p.requested_token_type.as_deref())
        } else {
            IssuedType::NotExpected
        };
        let slot = cache::slot_name(&x.key, cfg.cache.max_entries);
        let minted = sts::parse_answer(answer, issued).and_then(|m| match &x.actor_sub {
            Some(want)
                if token::unverified_act_sub(&m.access_token).as_deref() != Some(want.as_str()) =>
            {
                Err(StsFailure::BadAnswer(
                    "minted token does not name the actor in act.sub",
                ))
            }
            _ if p.expect_act && x.actor_sub.is_none() => Err(StsFailure::BadAnswer(
                "the actor token names no sub to check act against",
            )),
            _ => Ok(m),
        });
        match minted {
            Ok(minted) => {
                let until = cache::token_expiry_ms(
                    &cfg.cache,
                    minted.expires_in,
                    x.subject_exp,
                    x.actor_until_ms,
                    now,
                );
                if let Some(until) = until {
                    let value = Cached::Token(minted.access_token.clone());
                    self.store(host, &slot, &x.key, until, &value);
                    self.remember_exchange(x, value, until);
                }
                if host.debug_enabled() {
                    let fp = token::fingerprint(&x.subject);
                    host.log(
                        LogLevel::Debug,
                        &format!(
                            "STS call {} token={fp} minted, cached for {} ms",
                            x.call,
                            until.map_or(0, |u| u - now)
                        ),
                    );
                }
                Verdict::Continue(self.success_ops(&minted.access_token, &x.subject))
            }
            Err(failure) => {
                if let Some(life) = cache::rejection_lifetime_ms(&cfg.cache, x.subject_exp, now) {
                    let value = Cached::Rejected(failure.clone());
                    let life = now.saturating_add(life);
                    self.store(host, &slot, &x.key, life, &value);
                    if matches!(
                        failure,
                        StsFailure::SubjectRejected(_) | StsFailure::Forbidden(_)
                    ) {
                        self.remember_exchange(x, value, life);
                    }
                }
                if !matches!(
                    failure,
                    StsFailure::SubjectRejected(_) | StsFailure::Forbidden(_)
                ) {
                    host.metric(Metric::StsErrors, 1);
                    host.log(
                        LogLevel::Warn,
                        &format!("STS call {} failed: {failure:?}", x.call),
                    );
                }
                let v = self.failure_verdict(host, &failure);
                if let Verdict::Respond(r) = &v {
                    if r.status == 401 || r.status == 403 {
                        host.metric(Metric::Rejected, x.waiting.saturating_sub(1) as u64);
                    }
                }
                v
            }
        }
    }

    /// The filter's actor token arrived (or not): cache it and let the parked requests go on.
    #[allow(clippy::too_many_arguments)]
    fn on_actor_answer<H: Host>(
        &mut self,
        host: &H,
        receiver: Option<u32>,
        call: u32,
        actor: usize,
        parked: Vec<Parked>,
        answer: &HttpAnswer,
        now: u64,
    ) -> Vec<(u32, Verdict)> {
        match sts::parse_answer(answer, IssuedType::NotExpected) {
            Ok(minted) => {
                let key = self.config.actors[actor].key;
                let slot = cache::slot_name(&key, self.config.cache.max_entries);
                let until =
                    cache::token_expiry_ms(&self.config.cache, minted.expires_in, None, None, now);
                if let Some(until) = until {
                    self.store(
                        host,
                        &slot,
                        &key,
                        until,
                        &Cached::Token(minted.access_token.clone()),
                    );
                }
                host.log(
                    LogLevel::Info,
                    &format!(
                        "actor token obtained (STS call {call}), cached for {} ms",
                        until.map_or(0, |u| u - now)
                    ),
                );
                parked
                    .into_iter()
                    .map(|p| {
                        let v = self.proceed(
                            host,
                            p.ctx,
                            receiver,
                            p.profile,
                            &p.subject,
                            Some(&minted.access_token),
                            now,
                        );
                        (p.ctx, v)
                    })
                    .collect()
            }
            Err(failure) => {
                host.metric(Metric::StsErrors, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("actor token call {call} failed: {failure:?}"),
                );
                let v = match failure {
                    StsFailure::Unavailable(_) => self.failure_verdict(host, &failure),
                    _ => Verdict::Respond(LocalReply::bad_gateway(
                        "the token service refused the proxy's own actor token request",
                    )),
                };
                parked.into_iter().map(|p| (p.ctx, v.clone())).collect()
            }
        }
    }

    fn on_jwks_answer<H: Host>(
        &mut self,
        host: &H,
        issuer: usize,
        answer: &HttpAnswer,
    ) -> Vec<(u32, Verdict)> {
        let now = host.now_ms();
        let name = &self.config.trusted_issuers[issuer].issuer;
        let parsed = match answer.status {
            Some(200) if !answer.too_large => {
                KeySet::parse(&answer.body).map_err(|e| e.to_string())
            }
            Some(status) => Err(format!("status {status}")),
            None => Err("unreachable or timed out".to_string()),
        };
        let state = &mut self.issuers[issuer];
        let Some(remote) = state.remote.as_mut() else {
            return Vec::new();
        };
        let started = remote.fetching.take().map_or(now, |(_, at)| at);
        match parsed {
            Ok(set) => {
                host.log(
                    LogLevel::Info,
                    &format!(
                        "keys of issuer {name}: {} usable, {} skipped",
                        set.keys.len(),
                        set.skipped
                    ),
                );
                let mut slot = now.to_be_bytes().to_vec();
                slot.extend_from_slice(&answer.body);
                if let Err(e) = host.shared_set(&remote.keys_slot, &slot, None) {
                    host.log(LogLevel::Warn, &format!("sharing keys failed: {}", e.0));
                }
                state.keys = Some(set);
                state.version = now;
                state.unknown_kid = false;
                self.resolve_key_waiters(host, issuer, now)
            }
            Err(why) => {
                host.metric(Metric::JwksFetchFailures, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("fetching keys of issuer {name} failed: {why}"),
                );
                let _ = host.shared_set(&remote.attempt_slot, &encode_attempt(started, true), None);
                self.fail_key_waiters(issuer)
            }
        }
    }

    /// Forgets a request that ended (answered, or the client went away). If its context carried
    /// an STS call others still wait on, the call is marked for the root to dispatch again.
    pub fn on_request_done(&mut self, ctx: u32) {
        if let Some(i) = self.key_waiters.remove(&ctx) {
            self.issuers[i].waiters.retain(|w| w.ctx != ctx);
        }
        if let Some(key) = self.members.remove(&ctx) {
            if let Some(flight) = self.flights.get_mut(&key) {
                flight.forget(ctx);
                // An orphan (its carrier gone) that nobody waits for is never sent again.
                if flight.call.is_none() && flight.waiting().is_empty() {
                    self.flights.remove(&key);
                }
            }
        }
        // Calls this context carried are lost with it: the root dispatches them again for
        // whoever still waits.
        for key in self.carried.remove(&ctx).unwrap_or_default() {
            let Some(flight) = self.flights.get_mut(&key) else {
                continue;
            };
            if flight.carrier != Some(ctx) {
                continue;
            }
            if let Some(call) = flight.call.take() {
                self.calls.remove(&call);
            }
            flight.carrier = None;
            if flight.waiting().is_empty() {
                self.flights.remove(&key);
            }
        }
    }

    /// Periodic work on the root context: dispatches again the STS calls whose carrier went
    /// away, takes up keys another worker fetched, and fetches keys that are due. Returns
    /// verdicts for requests that were waiting.
    pub fn on_tick<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let mut out = self.redispatch_orphans(host);
        let now = host.now_ms();
        for i in 0..self.issuers.len() {
            out.extend(self.tick_issuer(host, i, now));
        }
        out
    }

    fn redispatch_orphans<H: Host>(&mut self, host: &H) -> Vec<(u32, Verdict)> {
        let orphans: Vec<CacheKey> = self
            .flights
            .iter()
            .filter(|(_, f)| f.call.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for key in orphans {
            let Some(flight) = self.flights.get(&key) else {
                continue;
            };
            // Built anew: a fresh client assertion (jti, iat) and the current actor token.
            let now_s = host.now_ms() / 1000;
            let request = match &flight.job {
                Job::Exchange {
                    profile,
                    subject,
                    actor_token,
                    ..
                } => {
                    let p = &self.config.profiles[*profile];
                    let current = match p.actor.as_ref().map(|a| &a.source) {
                        Some(ActorSource::ClientCredentials(ai)) => {
                            self.cached_actor(host, *ai, host.now_ms()).map(|(t, _)| t)
                        }
                        _ => None,
                    };
                    let actor = current.as_deref().or(actor_token.as_deref());
                    p.request(&self.config.endpoint, subject, actor, now_s)
                }
                Job::Actor { actor, .. } => {
                    self.config.actors[*actor].request(&self.config.endpoint, now_s)
                }
            };
            let sent = request
                .map_err(|_| "no randomness for the client assertion".to_string())
                .and_then(|r| host.dispatch(&r).map_err(|e| e.0));
            match sent {
                Ok(call) => {
                    host.metric(Metric::StsCalls, 1);
                    if let Some(flight) = self.flights.get_mut(&key) {
                        flight.call = Some(call);
                    }
                    self.calls.insert(call, key);
                }
                Err(why) => {
                    host.metric(Metric::StsErrors, 1);
                    host.log(
                        LogLevel::Warn,
                        &format!("STS call not dispatched again: {why}"),
                    );
                    let members = self
                        .flights
                        .remove(&key)
                        .map(|f| f.waiting())
                        .unwrap_or_default();
                    let v = self.failure_verdict(
                        host,
                        &StsFailure::Unavailable("token service unavailable"),
                    );
                    for m in members {
                        self.members.remove(&m);
                        out.push((m, v.clone()));
                    }
                }
            }
        }
        out
    }

    fn tick_issuer<H: Host>(&mut self, host: &H, i: usize, now: u64) -> Vec<(u32, Verdict)> {
        let state = &mut self.issuers[i];
        let Some(remote) = state.remote.as_mut() else {
            return Vec::new();
        };
        // Keys another worker (or an earlier fetch of ours) shared.
        if let Some((bytes, _)) = host.shared_get(&remote.keys_slot) {
            if let Some((at, body)) = split_stamp(&bytes) {
                if at > state.version {
                    if let Ok(set) = KeySet::parse(body) {
                        state.keys = Some(set);
                        state.version = at;
                        state.unknown_kid = false;
                        return self.resolve_key_waiters(host, i, now);
                    }
                }
            }
        }
        if remote.fetching.is_some() {
            return Vec::new();
        }
        let attempt = read_attempt(host, &remote.attempt_slot);
        let fetched = state.keys.as_ref().map(|_| state.version);
        if remote
            .schedule
            .due(now, fetched, attempt.at, attempt.failed, state.unknown_kid)
        {
            // Claim the attempt for this worker; a lost race means another worker fetches.
            if host
                .shared_set(
                    &remote.attempt_slot,
                    &encode_attempt(now, false),
                    attempt.cas,
                )
                .is_err()
            {
                return Vec::new();
            }
            state.unknown_kid = false;
            host.metric(Metric::JwksFetches, 1);
            match host.dispatch(&remote.call) {
                Ok(call) => {
                    remote.fetching = Some((call, now));
                    self.jwks_calls.insert(call, i);
                    Vec::new()
                }
                Err(e) => {
                    host.metric(Metric::JwksFetchFailures, 1);
                    host.log(
                        LogLevel::Warn,
                        &format!("key fetch not dispatched: {}", e.0),
                    );
                    let _ = host.shared_set(&remote.attempt_slot, &encode_attempt(now, true), None);
                    self.fail_key_waiters(i)
                }
            }
        } else {
            // Nothing to fetch (rate limit) or another worker's fetch ended or timed out:
            // waiters get a verdict from the keys at hand.
            let in_progress = attempt.at.is_some_and(|at| {
                !attempt.failed
                    && at > state.version
                    && now.saturating_sub(at) <= remote.call.timeout_ms + 1000
            });
            if state.waiters.is_empty() || in_progress {
                return Vec::new();
            }
            state.unknown_kid = false;
            self.resolve_key_waiters(host, i, now)
        }
    }

    /// Runs the requests that waited for `issuer`'s keys again, with the keys now at hand.
    fn resolve_key_waiters<H: Host>(
        &mut self,
        host: &H,
        issuer: usize,
        now: u64,
    ) -> Vec<(u32, Verdict)> {
        let waiters = std::mem::take(&mut self.issuers[issuer].waiters);
        let mut out = Vec::with_capacity(waiters.len());
        for w in waiters {
            self.key_waiters.remove(&w.ctx);
            // A token still naming an unknown key is refused now; it must not wait again.
            let v = match self.proceed_after_refresh(host, &w, now) {
                Verdict::Pause if self.key_waiters.contains_key(&w.ctx) => {
                    self.key_waiters.remove(&w.ctx);
                    self.issuers[issuer].waiters.retain(|x| x.ctx != w.ctx);
                    self.refuse_jwt(host, w.ctx, &w.subject, JwtError::UnknownKey)
                }
                v => v,
            };
            out.push((w.ctx, v));
        }
        out
    }

    fn proceed_after_refresh<H: Host>(&mut self, host: &H, w: &KeyWaiter, now: u64) -> Verdict {
        if host.debug_enabled() {
            let waited = now.saturating_sub(w.since_ms);
            host.log(
                LogLevel::Debug,
                &format!("ctx={} resumes after {waited} ms waiting for keys", w.ctx),
            );
        }
        self.proceed(
            host,
            w.ctx,
            None,
            w.profile,
            &w.subject,
            w.actor.as_deref(),
            now,
        )
    }

    fn fail_key_waiters(&mut self, issuer: usize) -> Vec<(u32, Verdict)> {
        let waiters = std::mem::take(&mut self.issuers[issuer].waiters);
        let reply =
            LocalReply::unavailable("signing keys of the token issuer could not be fetched");
        waiters
            .into_iter()
            .map(|w| {
                self.key_waiters.remove(&w.ctx);
                (w.ctx, Verdict::Respond(reply.clone()))
            })
            .collect()
    }

    fn store<H: Host>(
        &self,
        host: &H,
        slot: &str,
        key: &CacheKey,
        expires_at_ms: u64,
        value: &Cached,
    ) {
        if let Some(bytes) = cache::encode(key, expires_at_ms, value) {
            if let Err(e) = host.shared_set(slot, &bytes, None) {
                host.log(LogLevel::Warn, &format!("cache write failed: {}", e.0));
            }
        }
    }

    /// Removes headers a client could use to pass off a token as the filter's.
    fn strip_ops(&self) -> Vec<HeaderOp> {
        let out = &self.config.output;
        let mut ops = Vec::new();
        if out.header != self.config.subject_token.header {
            ops.push(HeaderOp::Remove(out.header.clone()));
        }
        if let Some(h) = &out.original_token_header {
            ops.push(HeaderOp::Remove(h.clone()));
        }
        ops.extend(
            self.config
                .actor_headers
                .iter()
                .map(|h| HeaderOp::Remove(h.clone())),
        );
        ops
    }

    fn success_ops(&self, minted: &str, subject: &str) -> Vec<HeaderOp> {
        let out = &self.config.output;
        let mut ops = self.strip_ops();
        // Setting the output header replaces every copy of it; the subject header needs its
        // own removal only when it is another header.
        if out.header != self.config.subject_token.header {
            ops.insert(
                0,
                HeaderOp::Remove(self.config.subject_token.header.clone()),
            );
        }
        ops.push(HeaderOp::Set(
            out.header.clone(),
            format!("{}{minted}", out.prefix),
        ));
        if let Some(h) = &out.original_token_header {
            ops.push(HeaderOp::Set(h.clone(), subject.to_string()));
        }
        ops
    }

    /// The error table for STS failures, including the fail-open policy. Counts a rejection.
    fn failure_verdict<H: Host>(&self, host: &H, failure: &StsFailure) -> Verdict {
        let realm = &self.config.realm;
        match failure {
            StsFailure::SubjectRejected(_) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::invalid_token(
                    realm,
                    "the token service rejected the token",
                ))
            }
            StsFailure::Forbidden(code) => {
                host.metric(Metric::Rejected, 1);
                Verdict::Respond(LocalReply::forbidden(
                    realm,
                    &format!("the token service refused this exchange: {code}"),
                ))
            }
            StsFailure::InvalidClient => Verdict::Respond(LocalReply::bad_gateway(
                "the token service rejected the proxy's credentials",
            )),
            StsFailure::BadAnswer(why) => Verdict::Respond(LocalReply::bad_gateway(why)),
            StsFailure::Unavailable(why) => match self.config.on_sts_unavailable {
                OnStsUnavailable::Deny => Verdict::Respond(LocalReply::unavailable(why)),
                OnStsUnavailable::Allow => {
                    let mut ops = vec![HeaderOp::Remove(self.config.subject_token.header.clone())];
                    ops.extend(self.strip_ops());
                    Verdict::Continue(ops)
                }
            },
        }
    }
}

/// The per-worker state of one trusted issuer.
fn issuer_state(t: &crate::config::TrustedIssuer) -> IssuerState {
    match &t.keys {
        KeySource::Inline(set) => IssuerState {
            remote: None,
            keys: Some(set.clone()),
            version: 0,
            unknown_kid: false,
            waiters: Vec::new(),
        },
        KeySource::Remote(uri) => {
            let mut h = Sha256::new();
            for part in [&t.issuer, &uri.cluster, &uri.authority, &uri.path] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            let tag: String = h.finalize()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            IssuerState {
                remote: Some(RemoteKeys {
                    call: HttpCall {
                        cluster: uri.cluster.clone(),
                        headers: vec![
                            (":method".into(), "GET".into()),
                            (":path".into(), uri.path.clone()),
                            (":authority".into(), uri.authority.clone()),
                            ("accept".into(), "application/json".into()),
                        ],
                        body: String::new(),
                        timeout_ms: uri.timeout_ms,
                    },
                    schedule: Schedule {
                        refresh_ms: uri.refresh_s * 1000,
                    },
                    keys_slot: format!("token_exchange.jwks.{tag}"),
                    attempt_slot: format!("token_exchange.jwks_attempt.{tag}"),
                    fetching: None,
                }),
                keys: None,
                version: 0,
                unknown_kid: false,
                waiters: Vec::new(),
            }
        }
    }
}

fn encode_attempt(at: u64, failed: bool) -> Vec<u8> {
    let mut v = at.to_be_bytes().to_vec();
    v.push(u8::from(failed));
    v
}

fn read_attempt<H: Host>(host: &H, slot: &str) -> Attempt {
    match host.shared_get(slot) {
        Some((bytes, cas)) => match split_stamp(&bytes) {
            Some((at, rest)) => Attempt {
                at: Some(at),
                failed: rest.first() == Some(&1),
                cas: Some(cas),
            },
            None => Attempt {
                cas: Some(cas),
                ..Attempt::default()
            },
        },
        None => Attempt::default(),
    }
}

/// Splits an 8-byte big-endian time stamp off the front of a shared-data value.
fn split_stamp(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (stamp, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*stamp), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::FakeHost;

    const NOW: u64 = 1_700_000_000_000;
    const ATT: &str = "urn:ietf:params:oauth:token-type:access_token";

    fn engine(extra: &str) -> Engine {
        let json = format!(
            r#"{{"sts":{{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_secret":"pw"}}{extra}}}"#
        );
        Engine::new(Config::parse(json.as_bytes(), &|_| None).unwrap())
    }

    fn ok(token: &str, expires_in: u64) -> HttpAnswer {
        HttpAnswer {
            status: Some(200),
            body: format!(r#"{{"access_token":"{token}","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":{expires_in}}}"#)
                .into_bytes(),
            too_large: false,
        }
    }

    fn err(status: u16, code: &str) -> HttpAnswer {
        HttpAnswer {
            status: Some(status),
            body: format!(r#"{{"error":"{code}"}}"#).into_bytes(),
            too_large: false,
        }
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    fn set_value(v: &Verdict, name: &str) -> Option<String> {
        let Verdict::Continue(ops) = v else {
            return None;
        };
        ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set(n, val) if n == name => Some(val.clone()),
            _ => None,
        })
    }

    fn status(v: &Verdict) -> u32 {
        match v {
            Verdict::Respond(r) => r.status,
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    /// Sends a request with `token` and answers its STS call with `answer`.
    fn exchange(
        e: &mut Engine,
        h: &FakeHost,
        ctx: u32,
        token: &str,
        answer: &HttpAnswer,
    ) -> Verdict {
        let auth = bearer(token);
        assert_eq!(
            e.on_request(h, ctx, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
        let mut out = e.on_http_answer(h, None, h.last_call(), answer);
        assert_eq!(out.len(), 1);
        out.remove(0).1
    }

    #[test]
    fn miss_then_hit_rewrites_authorization_without_pausing_the_second_time() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some("Bearer minted")
        );
        assert_eq!(h.calls.borrow().len(), 1);
        let v = e.on_request(&h, 2, &[("authorization", "Bearer caller")][..]);
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some("Bearer minted")
        );
        assert_eq!(h.calls.borrow().len(), 1, "served from cache");
        assert_eq!(h.metric_value(Metric::Requests), 2);
        assert_eq!(h.metric_value(Metric::CacheHits), 1);
        assert_eq!(h.metric_value(Metric::CacheMisses), 1);
        assert_eq!(h.metric_value(Metric::StsCalls), 1);
    }

    #[test]
    fn hot_tokens_are_served_from_the_worker_memo_until_expiry() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"max_entries":2,"expiry_skew_s":0}"#);
        exchange(&mut e, &h, 1, "hot", &ok("m", 60));
        h.shared.borrow_mut().clear();
        let v = e.on_request(&h, 2, &[("authorization", "Bearer hot")][..]);
        assert_eq!(
            v,
            Verdict::Continue(vec![HeaderOp::Set(
                "authorization".into(),
                "Bearer m".into()
            )])
        );
        h.advance_ms(60_000);
        assert_eq!(
            e.on_request(&h, 3, &[("authorization", "Bearer hot")][..]),
            Verdict::Pause,
            "never served after expiry"
        );
        // bounded: a full table is emptied
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"max_entries":2}"#);
        for (ctx, t) in [(1, "a"), (2, "b"), (3, "c")] {
            exchange(&mut e, &h, ctx, t, &ok("m", 3600));
        }
        assert!(e.memo[0].len() <= 2);
    }

    #[test]
    fn the_callers_token_never_survives_a_success() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","output":{"header":"x-exchanged","prefix":"","original_token_header":"x-orig"}"#,
        );
        let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
        let Verdict::Continue(ops) = &v else { panic!() };
        assert_eq!(
            ops,
            &vec![
                HeaderOp::Remove("authorization".into()),
                HeaderOp::Remove("x-exchanged".into()),
                HeaderOp::Remove("x-orig".into()),
                HeaderOp::Set("x-exchanged".into(), "minted".into()),
                HeaderOp::Set("x-orig".into(), "caller".into()),
            ]
        );
    }

    #[test]
    fn concurrent_misses_on_one_token_make_one_call() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        for ctx in 1..=20 {
            assert_eq!(
                e.on_request(&h, ctx, &[("authorization", "Bearer same")][..]),
                Verdict::Pause
            );
        }
        assert_eq!(h.calls.borrow().len(), 1);
        assert_eq!(h.metric_value(Metric::Coalesced), 19);
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
        let mut ctxs: Vec<u32> = out.iter().map(|(c, _)| *c).collect();
        ctxs.sort_unstable();
        assert_eq!(ctxs, (1..=20).collect::<Vec<_>>());
        assert!(out
            .iter()
            .all(|(_, v)| set_value(v, "authorization").as_deref() == Some("Bearer minted")));
        // a different token is a different flight
        assert_eq!(
            e.on_request(&h, 30, &[("authorization", "Bearer other")][..]),
            Verdict::Pause
        );
        assert_eq!(h.calls.borrow().len(), 2);
    }

    #[test]
    fn coalesced_failures_reach_every_waiter() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"negative_ttl_s":0}"#);
        for ctx in 1..=3 {
            e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..]);
        }
        let out = e.on_http_answer(&h, None, h.last_call(), &err(400, "invalid_grant"));
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|(_, v)| status(v) == 401));
        assert_eq!(h.metric_value(Metric::Rejected), 3);
        assert_eq!(h.metric_value(Metric::StsErrors), 0);
    }

    #[test]
    fn a_call_lost_with_its_context_is_dispatched_again_by_the_root() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
        let first = h.last_call();
        e.on_request_done(1);
        assert!(
            e.on_http_answer(&h, None, first, &ok("late", 60))
                .is_empty(),
            "lost call is forgotten"
        );
        assert!(e.on_tick(&h).is_empty());
        assert_eq!(h.calls.borrow().len(), 2);
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        // when the last waiter leaves too, nothing is left behind
        e.on_request(&h, 3, &[("authorization", "Bearer u")][..]);
        e.on_request_done(3);
        assert!(e.on_tick(&h).is_empty());
        assert_eq!(h.calls.borrow().len(), 3);
    }

    #[test]
    fn a_waiter_that_leaves_gets_no_verdict() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
        e.on_request_done(2);
        let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
        assert_eq!(out.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn missing_token_is_rejected_or_passed_on_by_policy() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = e.on_request(&h, 1, &[(":path", "/")][..]);
        let Verdict::Respond(r) = &v else { panic!() };
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"token-exchange\"")
        );
        let mut e = engine(r#","on_missing_token":"allow""#);
        assert_eq!(
            e.on_request(&h, 1, &[(":path", "/")][..]),
            Verdict::Continue(vec![])
        );
        assert!(h.calls.borrow().is_empty());
    }

    #[test]
    fn malformed_and_oversized_tokens_never_reach_the_sts() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","subject_token":{"max_bytes":16}"#);
        for v in [
            "Bearer ",
            "Bearer a b",
            &format!("Bearer {}", "x".repeat(17)),
        ] {
            let verdict = e.on_request(&h, 1, &[("authorization", v)][..]);
            assert_eq!(status(&verdict), 401, "{v}");
            let Verdict::Respond(r) = verdict else {
                unreachable!()
            };
            assert!(r
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token"));
        }
        assert!(h.calls.borrow().is_empty());
        assert_eq!(h.metric_value(Metric::Rejected), 3);
    }

    #[test]
    fn every_sts_failure_answers_per_the_error_table() {
        let cases: Vec<(HttpAnswer, u32)> = vec![
            (err(400, "invalid_request"), 401),
            (err(400, "invalid_grant"), 401),
            (err(400, "invalid_target"), 403),
            (err(400, "invalid_scope"), 403),
            (err(400, "unauthorized_client"), 403),
            (err(401, "invalid_client"), 502),
            (
                HttpAnswer {
                    status: Some(200),
                    body: b"garbage".to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                HttpAnswer {
                    status: Some(200),
                    body: br#"{"access_token":"a","token_type":"N_A","issued_token_type":"x:y"}"#
                        .to_vec(),
                    too_large: false,
                },
                502,
            ),
            (
                HttpAnswer {
                    status: Some(500),
                    body: vec![],
                    too_large: false,
                },
                503,
            ),
            (
                HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
                503,
            ),
        ];
        for (i, (answer, want)) in cases.into_iter().enumerate() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            let v = exchange(&mut e, &h, 1, &format!("t{i}"), &answer);
            assert_eq!(status(&v), want, "{answer:?}");
            let Verdict::Respond(r) = &v else {
                unreachable!()
            };
            assert!(!r.body.contains(&format!("t{i}\"")), "no token in the body");
            if want == 503 {
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            let errors = h.metric_value(Metric::StsErrors);
            assert_eq!(errors, u64::from(want >= 502), "{answer:?}");
        }
    }

    #[test]
    fn undispatchable_call_is_unavailable() {
        let h = FakeHost::at(NOW);
        h.refuse_dispatch.set(true);
        let mut e = engine("");
        let v = e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
        assert_eq!(status(&v), 503);
        assert_eq!(h.metric_value(Metric::StsErrors), 1);
    }

    #[test]
    fn fail_open_strips_the_token_and_passes_on() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","on_sts_unavailable":"allow""#);
        let v = exchange(
            &mut e,
            &h,
            1,
            "t",
            &HttpAnswer {
                status: None,
                body: vec![],
                too_large: false,
            },
        );
        assert_eq!(
            v,
            Verdict::Continue(vec![HeaderOp::Remove("authorization".into())])
        );
        // fail-open is only for outages: a rejection still answers
        let v = exchange(&mut e, &h, 2, "u", &err(400, "invalid_grant"));
        assert_eq!(status(&v), 401);
    }

    #[test]
    fn rejections_are_remembered_for_negative_ttl() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"negative_ttl_s":5}"#);
        assert_eq!(
            status(&exchange(&mut e, &h, 1, "bad", &err(400, "invalid_grant"))),
            401
        );
        for ctx in 2..50 {
            assert_eq!(
                status(&e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..])),
                401
            );
        }
        assert_eq!(h.calls.borrow().len(), 1);
        h.advance_ms(5_000);
        assert_eq!(
            e.on_request(&h, 99, &[("authorization", "Bearer bad")][..]),
            Verdict::Pause
        );
        assert_eq!(h.calls.borrow().len(), 2);
        // outages are not remembered
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        exchange(&mut e, &h, 1, "t", &err(503, "x"));
        assert_eq!(
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn entries_expire_and_are_exchanged_again() {
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"expiry_skew_s":10}"#);
        exchange(&mut e, &h, 1, "t", &ok("m1", 60));
        h.advance_ms(49_999);
        assert_eq!(
            set_value(
                &e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
                "authorization"
            )
            .as_deref(),
            Some("Bearer m1")
        );
        h.advance_ms(1);
        let v = exchange(&mut e, &h, 3, "t", &ok("m2", 60));
        assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m2"));
        assert_eq!(h.calls.borrow().len(), 2);
    }

    #[test]
    fn a_short_lived_answer_is_used_but_not_cached() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        let v = exchange(&mut e, &h, 1, "t", &ok("m1", 30));
        assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m1"));
        assert!(h.shared.borrow().is_empty());
        assert_eq!(
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn routes_pick_audiences_and_bypass() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","exchange":{"audience":"default"},"routes":[
                {"match":{"path_prefix":"/healthz"},"bypass":true},
                {"match":{"authority":"orders.example.com","methods":["GET"]},"exchange":{"audience":["orders"]}}]"#,
        );
        let health = e.on_request(
            &h,
            1,
            &[(":path", "/healthz"), ("authorization", "Bearer t")][..],
        );
        assert_eq!(health, Verdict::Continue(vec![]));
        assert_eq!(h.metric_value(Metric::Bypassed), 1);
        let req = [
            (":path", "/o"),
            (":method", "GET"),
            (":authority", "Orders.example.com:8080"),
            ("authorization", "Bearer t"),
        ];
        e.on_request(&h, 2, &req[..]);
        let req = [
            (":path", "/o"),
            (":method", "POST"),
            (":authority", "orders.example.com"),
            ("authorization", "Bearer t"),
        ];
        e.on_request(&h, 3, &req[..]);
        let calls = h.calls.borrow();
        assert_eq!(
            calls.len(),
            2,
            "different audiences never share a flight or an entry"
        );
        assert!(calls[0].1.body.contains("audience=orders&"));
        assert!(calls[1].1.body.contains("audience=default&"));
    }

    #[test]
    fn bypass_matches_only_the_path_the_server_will_serve() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            r#","routes":[{"match":{"path_prefix":"/healthz"},"bypass":true},
                {"match":{"path_prefix":"/orders"},"exchange":{"audience":"orders"}}]"#,
        );
        let mut ctx = 0;
        let mut ask = |path: &str| {
            ctx += 1;
            let token = format!("Bearer t{ctx}");
            e.on_request(
                &h,
                ctx,
                &[(":path", path), ("authorization", token.as_str())][..],
            )
        };
        for path in [
            "/healthz",
            "/healthz/",
            "/healthz/live?x=/..",
            "/healthz/./a",
            "/%68ealthz",
        ] {
            assert_eq!(ask(path), Verdict::Continue(vec![]), "{path} is bypassed");
        }
        for path in [
            "/healthz/../admin",
            "/healthz/%2e%2e/admin",
            "/healthz/.%2E/admin",
            "/healthz/..%2fadmin",
            "/healthz%2F..%2Fadmin",
            "/healthz/..%5cadmin",
            "/healthz\\..\\admin",
            "/healthz/..;/admin",
            "/healthz//../admin",
            "/healthz/%252e%252e/admin",
            "/healthz-admin",
            "/healthzX",
            "/orders/../healthz/../admin",
        ] {
            assert_eq!(
                ask(path),
                Verdict::Pause,
                "{path} must be exchanged, not bypassed"
            );
        }
        // Exchange rules see the same normalized path, on whole segments.
        let calls = h.calls.borrow();
        let orders = calls
            .iter()
            .filter(|c| c.1.body.contains("audience=orders"))
            .count();
        assert_eq!(orders, 0, "no path above resolves under /orders");
        drop(calls);
        assert_eq!(ask("/x/../orders/1"), Verdict::Pause);
        assert!(h
            .calls
            .borrow()
            .last()
            .is_some_and(|c| c.1.body.contains("audience=orders")));
        assert_eq!(ask("/ordersX"), Verdict::Pause);
        assert!(!h
            .calls
            .borrow()
            .last()
            .is_some_and(|c| c.1.body.contains("audience=orders")));
    }

    #[test]
    fn subject_exp_caps_the_cache_lifetime() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let exp = NOW / 1000 + 100;
        let jwt = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
        );
        let h = FakeHost::at(NOW);
        let mut e = engine(r#","cache":{"expiry_skew_s":0}"#);
        exchange(&mut e, &h, 1, &jwt, &ok("m", 3600));
        h.advance_ms(99_999);
        let auth = bearer(&jwt);
        assert_ne!(
            e.on_request(&h, 2, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
        h.advance_ms(1);
        assert_eq!(
            e.on_request(&h, 3, &[("authorization", auth.as_str())][..]),
            Verdict::Pause
        );
    }

    #[test]
    fn logs_carry_hashes_never_tokens_or_secrets() {
        let h = FakeHost::at(NOW);
        let mut e = engine("");
        exchange(
            &mut e,
            &h,
            7,
            "the-callers-token",
            &ok("the-minted-token", 3600),
        );
        e.on_request(&h, 8, &[("authorization", "Bearer the-callers-token")][..]);
        exchange(&mut e, &h, 9, "another", &err(401, "invalid_client"));
        let logs = h.logs.borrow();
        assert!(logs.len() >= 4);
        let fp = token::fingerprint("the-callers-token");
        assert!(logs
            .iter()
            .any(|(_, l)| l.contains("ctx=7") && l.contains(&fp)));
        for (_, l) in logs.iter() {
            for secret in ["the-callers-token", "the-minted-token", "another", "pw"] {
                assert!(!l.contains(secret), "{l}");
            }
        }
    }

    mod issuers {
        use super::*;
        use crate::jwks::tests::TestKeys;
        use serde_json::json;
        use std::sync::OnceLock;

        const ISS: &str = "https://idp.example";

        fn keys() -> &'static TestKeys {
            static KEYS: OnceLock<TestKeys> = OnceLock::new();
            KEYS.get_or_init(TestKeys::new)
        }

        fn token(kid: &str, exp_in_s: u64) -> String {
            let alg = match kid {
                "ec" | "ec2" => "ES256",
                "ed" => "EdDSA",
                _ => "RS256",
            };
            keys().sign(
                alg,
                Some(kid),
                &json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + exp_in_s }),
            )
        }

        fn inline_engine() -> Engine {
            engine(&format!(
                r#","trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256","ES256","EdDSA"],"jwks":{}}}]"#,
                keys().jwks()
            ))
        }

        fn remote_engine() -> Engine {
            engine(&format!(
                r#","trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256","ES256"],"jwks_uri":{{"cluster":"idp","authority":"idp.local","path":"/jwks","refresh_s":60}}}}]"#
            ))
        }

        fn jwks_answer(keys: serde_json::Value) -> HttpAnswer {
            HttpAnswer {
                status: Some(200),
                body: keys.to_string().into_bytes(),
                too_large: false,
            }
        }

        fn ask(e: &mut Engine, h: &FakeHost, ctx: u32, t: &str) -> Verdict {
            let auth = bearer(t);
            e.on_request(h, ctx, &[("authorization", auth.as_str())][..])
        }

        /// Answers the last JWKS fetch.
        fn answer_fetch(
            e: &mut Engine,
            h: &FakeHost,
            keys: serde_json::Value,
        ) -> Vec<(u32, Verdict)> {
            let call = h.calls_to("idp").last().expect("a key fetch").0;
            e.on_http_answer(h, None, call, &jwks_answer(keys))
        }

        /// A remote-keys engine that fetched `keys` at start.
        fn started(h: &FakeHost, keys: serde_json::Value) -> Engine {
            let mut e = remote_engine();
            e.on_tick(h);
            answer_fetch(&mut e, h, keys);
            e
        }

        /// A subject token with these extra claims, signed by the inline RS256 key.
        fn token_with(extra: serde_json::Value) -> String {
            let mut claims = json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + 600 });
            if let (Some(c), Some(x)) = (claims.as_object_mut(), extra.as_object()) {
                c.extend(x.clone());
            }
            keys().sign("RS256", Some("rsa"), &claims)
        }

        fn unsigned(claims: serde_json::Value) -> String {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        }

        #[test]
        fn may_act_names_who_may_act_and_others_get_403_without_an_sts_call() {
            let issuers = format!(
                r#""trusted_issuers":[{{"issuer":"{ISS}","algorithms":["RS256"],"jwks":{}}}]"#,
                keys().jwks()
            );
            let header_actor = r#"{"actor":{"source":"header","header":"x-actor"}}"#;
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(
                r#",{issuers},"exchange":{header_actor},"routes":[
                    {{"match":{{"path_prefix":"/lax"}},"exchange":{{"enforce_may_act":false}}}}]"#
            ));
            let ctx = std::cell::Cell::new(0);
            let ask = |e: &mut Engine, h: &FakeHost, path: &str, subject: &str, actor: &str| {
                ctx.set(ctx.get() + 1);
                let auth = bearer(subject);
                let req = [
                    (":path", path),
                    ("authorization", auth.as_str()),
                    ("x-actor", actor),
                ];
                e.on_request(h, ctx.get(), &req[..])
            };
            let svc = unsigned(json!({"sub": "svc-a", "iss": "https://sts.example"}));
            let other = unsigned(json!({"sub": "svc-b", "iss": "https://sts.example"}));
            let named = token_with(json!({"may_act": {"sub": "svc-a"}}));
            let named_iss =
                token_with(json!({"may_act": {"sub": "svc-a", "iss": "https://other"}}));
            let empty = token_with(json!({"may_act": {}}));
            let not_object = token_with(json!({"may_act": "svc-a"}));
            let free = token_with(json!({}));

            assert_eq!(
                ask(&mut e, &h, "/", &named, &svc),
                Verdict::Pause,
                "named actor goes on"
            );
            assert_eq!(
                ask(&mut e, &h, "/", &free, &other),
                Verdict::Pause,
                "no may_act: no limit"
            );
            let before = h.calls.borrow().len();
            for (subject, actor) in [
                (&named, &other),
                (&named_iss, &svc),
                (&empty, &svc),
                (&not_object, &svc),
            ] {
                let v = ask(&mut e, &h, "/", subject, actor);
                assert_eq!(status(&v), 403, "{v:?}");
                // The verified record remembers the decision: a second request is refused too.
                assert_eq!(status(&ask(&mut e, &h, "/", subject, actor)), 403);
            }
            assert_eq!(
                h.calls.borrow().len(),
                before,
                "no STS call for a refused actor"
            );
            assert_eq!(
                ask(&mut e, &h, "/lax", &named, &other),
                Verdict::Pause,
                "check turned off"
            );

            // The filter's own client-credentials actor is named by its client id.
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(
                r#",{issuers},"exchange":{{"actor":{{"source":"client_credentials"}}}}"#
            ));
            let edge = token_with(json!({"may_act": {"sub": "edge"}}));
            let someone = token_with(json!({"may_act": {"sub": "someone-else"}}));
            assert_eq!(ask(&mut e, &h, "/", &edge, ""), Verdict::Pause);
            assert_eq!(status(&ask(&mut e, &h, "/", &someone, "")), 403);
        }

        fn verified_lines(h: &FakeHost) -> usize {
            h.logs
                .borrow()
                .iter()
                .filter(|(_, l)| l.ends_with(" verified"))
                .count()
        }

        #[test]
        fn a_valid_token_is_verified_once_then_exchanged_and_cached() {
            let h = FakeHost::at(NOW);
            let mut e = inline_engine();
            let t = token("rsa", 600);
            assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
            let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
            for ctx in 2..10 {
                assert_ne!(ask(&mut e, &h, ctx, &t), Verdict::Pause);
            }
            assert_eq!(verified_lines(&h), 1, "a hot token is verified once");
            // the verified exp (600 s) capped the lifetime: 600 − 30 skew
            h.advance_ms(570_000);
            assert_eq!(ask(&mut e, &h, 20, &t), Verdict::Pause);
        }

        #[test]
        fn refused_tokens_never_reach_the_sts_and_are_counted_by_reason() {
            let h = FakeHost::at(NOW);
            let mut e = inline_engine();
            let expired = token("rsa", 0);
            h.advance_ms(31_000);
            let v = ask(&mut e, &h, 1, &expired);
            let Verdict::Respond(r) = &v else {
                panic!("{v:?}")
            };
            assert_eq!(r.status, 401);
            assert!(r
                .header("www-authenticate")
                .unwrap()
                .contains("error_description=\"token expired\""));
            let v = ask(&mut e, &h, 2, "opaque-token");
            assert_eq!(status(&v), 401);
            assert!(h.calls.borrow().is_empty());
            assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Expired)), 1);
            assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Malformed)), 1);
            assert_eq!(h.metric_value(Metric::Rejected), 2);
        }

        #[test]
        fn remote_keys_answer_503_until_fetched_then_verify() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            let t = token("rsa", 600);
            let v = ask(&mut e, &h, 1, &t);
            assert_eq!(status(&v), 503);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls_to("idp").len(), 1);
            let fetch = &h.calls_to("idp")[0].1;
            assert_eq!(
                fetch.headers[..3],
                [
                    (":method".to_string(), "GET".to_string()),
                    (":path".into(), "/jwks".into()),
                    (":authority".into(), "idp.local".into())
                ]
            );
            assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
            assert_eq!(ask(&mut e, &h, 2, &t), Verdict::Pause);
            assert_eq!(h.calls_to("sts").len(), 1);
            assert_eq!(h.metric_value(Metric::JwksFetches), 1);
        }

        #[test]
        fn requests_before_the_first_keys_do_not_cause_an_early_refresh() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            e.on_tick(&h);
            assert_eq!(status(&ask(&mut e, &h, 1, &token("rsa", 600))), 503);
            answer_fetch(&mut e, &h, keys().jwks());
            h.advance_ms(10_000);
            e.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                1,
                "no refresh before refresh_s without an unknown kid"
            );
        }

        #[test]
        fn a_failed_first_fetch_is_retried_every_second() {
            let h = FakeHost::at(NOW);
            let mut e = remote_engine();
            e.on_tick(&h);
            let call = h.calls_to("idp")[0].0;
            e.on_http_answer(
                &h,
                None,
                call,
                &HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
            );
            assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
            h.advance_ms(900);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 1);
            h.advance_ms(100);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2);
        }

        #[test]
        fn unknown_kid_waits_for_one_early_refresh_then_goes_on() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            let rotated = token("ec", 600);
            assert_eq!(ask(&mut e, &h, 7, &rotated), Verdict::Pause);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls_to("idp").len(), 2, "early refresh");
            let out = answer_fetch(
                &mut e,
                &h,
                json!({ "keys": [keys().rsa_jwk("rsa"), keys().ec_jwk("ec")] }),
            );
            assert_eq!(
                out,
                vec![(7, Verdict::Pause)],
                "verified, now waiting on the STS"
            );
            assert_eq!(h.calls_to("sts").len(), 1);
            let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            assert_eq!(out.len(), 1);
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
        }

        #[test]
        fn a_flood_of_unknown_kids_costs_one_fetch_per_ten_seconds() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            let stranger = token("ec", 600);
            for ctx in 0..200 {
                assert_eq!(ask(&mut e, &h, ctx, &stranger), Verdict::Pause);
            }
            e.on_tick(&h);
            let out = answer_fetch(&mut e, &h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            assert_eq!(out.len(), 200);
            assert!(out.iter().all(|(_, v)| status(v) == 401));
            for ctx in 200..400 {
                assert_eq!(
                    status(&ask(&mut e, &h, ctx, &stranger)),
                    401,
                    "no waiting inside the 10 s"
                );
                e.on_tick(&h);
            }
            assert_eq!(
                h.calls_to("idp").len(),
                2,
                "the start fetch and one early refresh"
            );
            assert_eq!(
                h.metric_value(Metric::InvalidToken(JwtError::UnknownKey)),
                400
            );
            h.advance_ms(10_000);
            assert_eq!(ask(&mut e, &h, 500, &stranger), Verdict::Pause);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 3);
        }

        #[test]
        fn an_idp_that_hangs_or_floods_keeps_the_last_good_keys() {
            for bad in [
                HttpAnswer {
                    status: None,
                    body: vec![],
                    too_large: false,
                },
                HttpAnswer {
                    status: Some(200),
                    body: vec![],
                    too_large: true,
                },
                HttpAnswer {
                    status: Some(200),
                    body: b"{\"keys\":".to_vec(),
                    too_large: false,
                },
            ] {
                let h = FakeHost::at(NOW);
                let mut e = started(&h, keys().jwks());
                h.advance_ms(60_000);
                e.on_tick(&h);
                let call = h.calls_to("idp")[1].0;
                e.on_http_answer(&h, None, call, &bad);
                assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
                assert_eq!(
                    ask(&mut e, &h, 1, &token("ec", 600)),
                    Verdict::Pause,
                    "{bad:?}"
                );
            }
        }

        #[test]
        fn a_failed_refresh_keeps_the_last_good_keys() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, keys().jwks());
            h.advance_ms(60_000);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2, "regular refresh");
            let call = h.calls_to("idp")[1].0;
            e.on_http_answer(
                &h,
                None,
                call,
                &HttpAnswer {
                    status: Some(500),
                    body: vec![],
                    too_large: false,
                },
            );
            assert_eq!(
                ask(&mut e, &h, 1, &token("ec", 600)),
                Verdict::Pause,
                "old keys still verify"
            );
            h.advance_ms(9_000);
            e.on_tick(&h);
            assert_eq!(h.calls_to("idp").len(), 2);
            h.advance_ms(1_000);
            e.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                3,
                "retried after 10 s, before refresh_s"
            );
        }

        #[test]
        fn rotation_rejects_tokens_of_a_removed_key() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, keys().jwks());
            let old = token("rsa", 600);
            let v = ask(&mut e, &h, 1, &old);
            assert_eq!(v, Verdict::Pause);
            e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
            h.advance_ms(60_000);
            e.on_tick(&h);
            answer_fetch(&mut e, &h, json!({ "keys": [keys().ec_jwk("ec")] }));
            assert_eq!(
                status(&ask(&mut e, &h, 2, &old)),
                401,
                "cached exchange is not served for a token whose key is gone"
            );
        }

        #[test]
        fn workers_share_one_fetch_through_shared_data() {
            let h = FakeHost::at(NOW);
            let mut a = remote_engine();
            let mut b = remote_engine();
            a.on_tick(&h);
            b.on_tick(&h);
            assert_eq!(
                h.calls_to("idp").len(),
                1,
                "the CAS claim lets one worker fetch"
            );
            answer_fetch(&mut a, &h, keys().jwks());
            b.on_tick(&h);
            assert_eq!(
                ask(&mut b, &h, 1, &token("rsa", 600)),
                Verdict::Pause,
                "b took up a's keys"
            );
            assert_eq!(h.calls_to("idp").len(), 1);
        }

        #[test]
        fn a_waiter_that_leaves_is_forgotten() {
            let h = FakeHost::at(NOW);
            let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
            h.advance_ms(10_000);
            assert_eq!(ask(&mut e, &h, 3, &token("ec", 600)), Verdict::Pause);
            e.on_request_done(3);
            e.on_tick(&h);
            assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
        }
    }

    mod delegation {
        use super::*;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;

        fn jwt(claims: serde_json::Value) -> String {
            format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            )
        }

        fn form_of(call: &HttpCall) -> Vec<(String, String)> {
            form_urlencoded::parse(call.body.as_bytes())
                .into_owned()
                .collect()
        }

        fn field(call: &HttpCall, name: &str) -> Option<String> {
            form_of(call)
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
        }

        fn plain(token: &str, expires_in: u64) -> HttpAnswer {
            HttpAnswer {
                status: Some(200),
                body: serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
                    .to_string()
                    .into_bytes(),
                too_large: false,
            }
        }

        #[test]
        fn the_actor_token_is_fetched_once_for_many_requests_and_again_after_expiry() {
            let h = FakeHost::at(NOW);
            let mut e =
                engine(r#","exchange":{"actor":{"source":"client_credentials","scope":"act"}}"#);
            assert_eq!(
                e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]),
                Verdict::Pause
            );
            assert_eq!(
                e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]),
                Verdict::Pause
            );
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 1, "one actor call for two waiting requests");
            assert_eq!(
                field(&calls[0].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
            let actor = jwt(serde_json::json!({"sub": "edge-svc"}));
            let out = e.on_http_answer(&h, Some(1), calls[0].0, &plain(&actor, 120));
            assert_eq!(out, vec![(1, Verdict::Pause), (2, Verdict::Pause)]);
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 3);
            for (_, c) in &calls[1..] {
                assert_eq!(field(c, "actor_token").as_deref(), Some(actor.as_str()));
                assert_eq!(
                    field(c, "actor_token_type").as_deref(),
                    Some(crate::config::ACCESS_TOKEN_TYPE)
                );
            }
            // a new subject later reuses the cached actor token
            e.on_request(&h, 3, &[("authorization", "Bearer u3")][..]);
            assert_eq!(h.calls_to("sts").len(), 4);
            assert_eq!(
                field(&h.calls_to("sts")[3].1, "grant_type").as_deref(),
                Some(sts::TOKEN_EXCHANGE_GRANT)
            );
            // after its lifetime (120 − 30 s skew) it is fetched again
            h.advance_ms(90_000);
            e.on_request(&h, 4, &[("authorization", "Bearer u4")][..]);
            assert_eq!(
                field(&h.calls_to("sts")[4].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
        }

        #[test]
        fn a_failed_actor_call_answers_every_parked_request() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &err(400, "invalid_scope"));
            assert_eq!(out.len(), 2);
            assert!(
                out.iter().all(|(_, v)| status(v) == 502),
                "the proxy's own request failed"
            );
        }

        #[test]
        fn an_orphaned_actor_call_is_dispatched_again() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
            e.on_request_done(1);
            e.on_tick(&h);
            assert_eq!(h.calls_to("sts").len(), 2);
            let out = e.on_http_answer(&h, None, h.last_call(), &plain("actor", 600));
            assert_eq!(out, vec![(2, Verdict::Pause)]);
        }

        #[test]
        fn header_actor_is_required_forwarded_to_the_sts_and_stripped() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let v = e.on_request(&h, 1, &[("authorization", "Bearer u")][..]);
            assert_eq!(status(&v), 401);
            assert!(h.calls.borrow().is_empty());
            let v = e.on_request(
                &h,
                2,
                &[("authorization", "Bearer u"), ("x-actor", "a1")][..],
            );
            assert_eq!(v, Verdict::Pause);
            assert_eq!(
                field(&h.calls_to("sts")[0].1, "actor_token").as_deref(),
                Some("a1")
            );
            let out = e.on_http_answer(&h, Some(2), h.last_call(), &ok("minted", 3600));
            let Verdict::Continue(ops) = &out[0].1 else {
                panic!()
            };
            assert!(ops.contains(&HeaderOp::Remove("x-actor".into())));
            // another actor never shares the minted token
            assert_eq!(
                e.on_request(
                    &h,
                    3,
                    &[("authorization", "Bearer u"), ("x-actor", "a2")][..]
                ),
                Verdict::Pause
            );
            assert_eq!(h.calls_to("sts").len(), 2);
        }

        #[test]
        fn expect_act_checks_the_minted_act_claim() {
            let actor = jwt(serde_json::json!({"sub": "agent-7"}));
            for (minted_act, want) in [("agent-7", None), ("someone-else", Some(502))] {
                let h = FakeHost::at(NOW);
                let mut e = engine(
                    r#","exchange":{"actor":{"source":"header","header":"x-actor"},"expect_act":true}"#,
                );
                e.on_request(
                    &h,
                    1,
                    &[("authorization", "Bearer u"), ("x-actor", actor.as_str())][..],
                );
                let minted = jwt(serde_json::json!({"sub": "u", "act": {"sub": minted_act}}));
                let out = e.on_http_answer(&h, Some(1), h.last_call(), &ok(&minted, 3600));
                match want {
                    None => assert!(matches!(out[0].1, Verdict::Continue(_))),
                    Some(code) => assert_eq!(status(&out[0].1), code),
                }
            }
        }

        #[test]
        fn a_header_actors_exp_caps_the_cached_delegation() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let actor = jwt(serde_json::json!({"sub": "agent", "exp": NOW / 1000 + 60}));
            let req = [("authorization", "Bearer u"), ("x-actor", actor.as_str())];
            assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
            e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
            // Within the actor's life (minus the 30 s skew) the entry serves.
            h.advance_ms(20_000);
            assert!(matches!(
                e.on_request(&h, 2, &req[..]),
                Verdict::Continue(_)
            ));
            // Past it, the same (now expired) actor token never gets the cached token.
            h.advance_ms(100_000);
            assert_eq!(e.on_request(&h, 3, &req[..]), Verdict::Pause);
            assert_eq!(h.calls_to("sts").len(), 2);
        }

        #[test]
        fn the_filters_own_actor_token_caps_the_cached_delegation() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"client_credentials"}}"#);
            let req = [("authorization", "Bearer u")];
            assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
            // The actor token lives 100 s (70 s in the cache); the delegated one an hour.
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("act-1", 100));
            assert_eq!(out[0].1, Verdict::Pause);
            e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
            h.advance_ms(60_000);
            assert!(matches!(
                e.on_request(&h, 2, &req[..]),
                Verdict::Continue(_)
            ));
            h.advance_ms(15_000);
            assert_eq!(
                e.on_request(&h, 3, &req[..]),
                Verdict::Pause,
                "the delegation made with an expired actor token is not served"
            );
            assert_eq!(
                field(&h.calls_to("sts")[2].1, "grant_type").as_deref(),
                Some("client_credentials")
            );
        }

        #[test]
        fn a_token_minted_without_the_act_check_never_serves_a_route_with_it() {
            let h = FakeHost::at(NOW);
            let mut e = engine(
                r#","exchange":{"actor":{"source":"header","header":"x-actor"}},
                "routes":[{"match":{"path_prefix":"/strict"},"exchange":{"expect_act":true}}]"#,
            );
            let actor = jwt(serde_json::json!({"sub": "agent"}));
            let lax = [
                (":path", "/lax"),
                ("authorization", "Bearer u"),
                ("x-actor", actor.as_str()),
            ];
            assert_eq!(e.on_request(&h, 1, &lax[..]), Verdict::Pause);
            let no_act = jwt(serde_json::json!({"sub": "u"}));
            e.on_http_answer(&h, Some(1), h.last_call(), &ok(&no_act, 3600));
            assert!(matches!(
                e.on_request(&h, 2, &lax[..]),
                Verdict::Continue(_)
            ));
            let strict = [
                (":path", "/strict"),
                ("authorization", "Bearer u"),
                ("x-actor", actor.as_str()),
            ];
            assert_eq!(e.on_request(&h, 3, &strict[..]), Verdict::Pause);
            let out = e.on_http_answer(&h, Some(3), h.last_call(), &ok(&no_act, 3600));
            assert_eq!(status(&out[0].1), 502, "act is checked on the strict route");
        }

        #[test]
        fn a_redispatched_call_signs_a_fresh_assertion() {
            let (pem, _) = crate::assertion::tests::es256_pem();
            let json = r#"{"sts":{"cluster":"sts","authority":"sts.local","token_path":"/token","client_id":"edge","client_auth":"private_key_jwt","private_key":{"pem_env":"KEY"}}}"#;
            let config = Config::parse(json.as_bytes(), &|k| (k == "KEY").then(|| pem.clone()));
            let mut e = Engine::new(config.unwrap());
            let h = FakeHost::at(NOW);
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
            e.on_request_done(1);
            h.advance_ms(100);
            e.on_tick(&h);
            let calls = h.calls_to("sts");
            assert_eq!(calls.len(), 2);
            let first = field(&calls[0].1, "client_assertion").unwrap();
            let again = field(&calls[1].1, "client_assertion").unwrap();
            let jti = |a: &str| crate::token::tests_support::claim(a, "jti");
            assert_ne!(jti(&first), jti(&again), "a replayed jti would be refused");
            assert_eq!(field(&calls[1].1, "subject_token").as_deref(), Some("t"));
        }

        #[test]
        fn an_orphan_nobody_waits_for_is_not_sent_again() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
            e.on_request_done(1);
            e.on_request_done(2);
            assert!(e.on_tick(&h).is_empty());
            assert_eq!(h.calls.borrow().len(), 1);
        }

        #[test]
        fn remote_numbers_never_wrap_the_clock() {
            let h = FakeHost::at(NOW);
            let mut e = engine("");
            let huge = HttpAnswer {
                status: Some(200),
                body: format!(r#"{{"access_token":"forever","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":18446744073709551615}}"#).into_bytes(),
                too_large: false,
            };
            e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &huge);
            assert!(matches!(out[0].1, Verdict::Continue(_)));
            h.advance_ms(86_400_000);
            assert!(matches!(
                e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
                Verdict::Continue(_)
            ));
            // expires_in as a string of digits is read as seconds.
            let as_text = HttpAnswer {
                status: Some(200),
                body: format!(r#"{{"access_token":"x","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":"60"}}"#).into_bytes(),
                too_large: false,
            };
            e.on_request(&h, 3, &[("authorization", "Bearer v")][..]);
            let out = e.on_http_answer(&h, Some(3), h.last_call(), &as_text);
            assert!(matches!(out[0].1, Verdict::Continue(_)));
            h.advance_ms(31_000);
            assert_eq!(
                e.on_request(&h, 4, &[("authorization", "Bearer v")][..]),
                Verdict::Pause
            );
        }

        #[test]
        fn a_bearer_credential_gone_wrong_is_refused_even_when_missing_ones_pass() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","on_missing_token":"allow""#);
            for v in ["Bearer\ttok", "Bearer,tok", "bearer\u{b}tok"] {
                assert_eq!(
                    status(&e.on_request(&h, 1, &[("authorization", v)][..])),
                    401,
                    "{v:?}"
                );
            }
            assert!(matches!(
                e.on_request(&h, 2, &[("authorization", "Basic dTpw")][..]),
                Verdict::Continue(_)
            ));
            assert!(h.calls.borrow().is_empty());
        }

        #[test]
        fn repeated_token_headers_are_refused_not_picked_from() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
            let two = [
                ("authorization", "Bearer u"),
                ("x-actor", "a"),
                ("x-actor", "b"),
            ];
            assert_eq!(status(&e.on_request(&h, 1, &two[..])), 401);
            let mut e = engine(r#","subject_token":{"header":"x-subject","prefix":""}"#);
            let two = [("x-subject", "s1"), ("x-subject", "s2")];
            assert_eq!(status(&e.on_request(&h, 2, &two[..])), 401);
            assert_eq!(
                e.on_request(&h, 3, &[("x-subject", "s1")][..]),
                Verdict::Pause
            );
            assert_eq!(h.calls.borrow().len(), 1);
        }

        #[test]
        fn thousands_of_routes_load_and_match_in_order() {
            let routes: Vec<String> = (0..5000)
                .map(|i| {
                    format!(
                        r#"{{"match":{{"path_prefix":"/r{i}"}},"exchange":{{"audience":"a{i}"}}}}"#
                    )
                })
                .collect();
            let h = FakeHost::at(NOW);
            let mut e = engine(&format!(r#","routes":[{}]"#, routes.join(",")));
            let v = e.on_request(
                &h,
                1,
                &[(":path", "/r4999/x"), ("authorization", "Bearer t")][..],
            );
            assert_eq!(v, Verdict::Pause);
            assert!(h.calls.borrow()[0].1.body.contains("audience=a4999&"));
            e.on_request(
                &h,
                2,
                &[(":path", "/r49999"), ("authorization", "Bearer t")][..],
            );
            assert!(
                !h.calls.borrow()[1].1.body.contains("audience=a4999&"),
                "whole segments"
            );
        }

        #[test]
        fn jwt_bearer_answers_need_no_issued_token_type() {
            let h = FakeHost::at(NOW);
            let mut e = engine(r#","exchange":{"grant":"jwt_bearer"}"#);
            e.on_request(&h, 1, &[("authorization", "Bearer a.b.c")][..]);
            assert_eq!(
                field(&h.calls_to("sts")[0].1, "assertion").as_deref(),
                Some("a.b.c")
            );
            let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("minted", 600));
            assert_eq!(
                set_value(&out[0].1, "authorization").as_deref(),
                Some("Bearer minted")
            );
        }
    }
}
