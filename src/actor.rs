//! The filter's own actor tokens (client-credentials grants, one per distinct scope and
//! audience): the current one from the shared cache, the request for a new one, and what its
//! answer leaves in the cache. Also how long a header actor's token stays good.

use crate::cache::{self, Cached, SharedCache};
use crate::client::ActorProfile;
use crate::config::CacheConfig;
use crate::host::{Host, HttpAnswer, LogLevel};
use crate::sts::{self, IssuedType, StsFailure};
use crate::token;

/// Where the filter's actor tokens are cached, and by which lifetime rules.
pub struct Actors {
    cache: SharedCache,
    rules: CacheConfig,
}

impl Actors {
    /// The actor tokens under these cache rules.
    pub fn new(rules: CacheConfig) -> Self {
        Actors {
            cache: SharedCache::new(rules.max_entries),
            rules,
        }
    }

    /// The actor's current token, if still good, and until when (ms).
    pub fn current<H: Host>(
        &self,
        host: &H,
        actor: &ActorProfile,
        now: u64,
    ) -> Option<(String, u64)> {
        match self.cache.get(host, &actor.key, now) {
            Some((Cached::Token(t), until)) => Some((t, until)),
            _ => None,
        }
    }

    /// The token to send for the actor and until when it is good (ms): `fetched` (just
    /// arrived) or the cached one; `None` when a new one must be fetched first. A fetched token
    /// too short-lived to cache is used once and caps nothing beyond `now`.
    pub fn token_for<H: Host>(
        &self,
        host: &H,
        actor: &ActorProfile,
        fetched: Option<&str>,
        now: u64,
    ) -> Option<(String, u64)> {
        match (fetched, self.current(host, actor, now)) {
            (Some(t), Some((c, until))) if c == t => Some((c, until)),
            (Some(t), _) => Some((t.to_string(), now)),
            (None, current) => current,
        }
    }

    /// Reads the answer to the actor's request (call `call`) and caches the token.
    pub fn on_answer<H: Host>(
        &self,
        host: &H,
        actor: &ActorProfile,
        call: u32,
        answer: &HttpAnswer,
        now: u64,
    ) -> Result<String, StsFailure> {
        let minted = sts::parse_answer(answer, IssuedType::NotExpected)?;
        let until = cache::token_expiry_ms(&self.rules, minted.expires_in, None, None, now);
        if let Some(until) = until {
            let value = Cached::Token(minted.access_token.clone());
            self.cache.put(host, &actor.key, until, &value);
        }
        let life = until.map_or(0, |u| u - now);
        let msg = format!("actor token obtained (STS call {call}), cached for {life} ms");
        host.log(LogLevel::Info, &msg);
        Ok(minted.access_token)
    }
}

/// When a header actor's token stops being good for caching (ms): its unverified `exp` less
/// the skew (a forged `exp` can only shorten its own entry).
pub fn header_actor_until(actor: Option<&str>, skew_s: u64) -> Option<u64> {
    let exp = token::unverified_exp(actor?)?;
    Some(
        exp.saturating_mul(1000)
            .saturating_sub(skew_s.saturating_mul(1000)),
    )
}
