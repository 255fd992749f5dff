//! RFC 7662 introspection of opaque tokens, as one worker sees it: each introspecting issuer's
//! endpoint and the filter's credentials there, the answers shared with the other workers through
//! a slot table in shared data (active for `min(cache_s, exp − now − expiry_skew_s)`, inactive or
//! refused for `negative_ttl_s`), and the backoff after a failed call.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, SlotTable};
use crate::config::{CacheConfig, ConfigError, TrustedIssuer};
use crate::endpoint::{feed, ClientAuth, Endpoint, NoRandomness};
use crate::host::{Host, HttpAnswer, HttpCall, LogLevel};
use crate::jwks::backoff_ms;
use crate::metrics::Metric;
use crate::policy::Claims;

mod answer;

pub use answer::{is_jwt_shaped, judge, judge_body, Active, Failure, Refusal};

/// The most a failing endpoint is left alone before the next try (ms).
const MAX_BACKOFF_MS: u64 = 30_000;
const SLOT_PREFIX: &str = "token_exchange.introspection.";
const KIND_ACTIVE: u8 = 0x10;
const KIND_INACTIVE: u8 = 0x11;
const KIND_REFUSED: u8 = 0x12;

/// An opaque token its issuer called active: its claims and how long that answer is trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The answer's members.
    pub claims: Arc<Claims>,
    /// The token's `exp` (seconds), if the answer gave one.
    pub exp: Option<u64>,
    /// When the answer stops being trusted (ms): asked again after that.
    pub until_ms: u64,
}

/// One introspecting issuer.
struct Site {
    issuer: TrustedIssuer,
    endpoint: Endpoint,
    cache_ms: u64,
    /// Failed calls in a row, and when the next may be made (ms).
    failures: u32,
    resume_at_ms: u64,
}

/// The introspecting issuers of one worker.
pub struct Introspector {
    sites: Vec<Option<Site>>,
    table: SlotTable,
    negative_ms: u64,
    skew_ms: u64,
}

impl Introspector {
    /// The endpoints of the issuers that introspect, under the cache's bounds and lifetimes.
    pub fn compile(issuers: &[TrustedIssuer], cache: &CacheConfig) -> Result<Self, ConfigError> {
        let mut sites = Vec::with_capacity(issuers.len());
        for (i, t) in issuers.iter().enumerate() {
            let Some(c) = &t.introspection else {
                sites.push(None);
                continue;
            };
            let key = format!("trusted_issuers[{i}].introspection.private_key");
            let auth = ClientAuth::compile(&c.client_auth, &key)?;
            let endpoint = Endpoint::new(
                &c.cluster,
                &c.authority,
                &c.path,
                c.timeout_ms,
                c.client_id.clone(),
                auth,
            );
            sites.push(Some(Site {
                issuer: t.clone(),
                endpoint,
                cache_ms: c.cache_s.saturating_mul(1000),
                failures: 0,
                resume_at_ms: 0,
            }));
        }
        Ok(Introspector {
            sites,
            table: SlotTable::new(SLOT_PREFIX, cache.max_entries),
            negative_ms: cache.negative_ttl_s.saturating_mul(1000),
            skew_ms: cache.expiry_skew_s.saturating_mul(1000),
        })
    }

    /// The key of `token`'s answer from `issuer` (the issuer is part of it).
    pub fn key(&self, issuer: usize, token: &str) -> CacheKey {
        let mut h = Sha256::new();
        feed(&mut h, "introspection");
        feed(&mut h, self.issuer_name(issuer));
        feed(&mut h, token);
        h.finalize().into()
    }

    /// The answer some worker got for `key` from `issuer`, while it is remembered.
    pub fn remembered<H: Host>(
        &self,
        host: &H,
        issuer: usize,
        key: &CacheKey,
        now_ms: u64,
    ) -> Option<Result<Found, Failure>> {
        let site = self.sites.get(issuer)?.as_ref()?;
        let (kind, payload, until_ms) = self.table.get(host, key, now_ms)?;
        match kind {
            // Judged again by this configuration's rules: another listener, or the
            // configuration before a reload, may have judged it by others.
            KIND_ACTIVE => match judge_body(&payload, &site.issuer, now_ms / 1000) {
                Ok(Active { claims, exp }) => Some(Ok(Found {
                    claims: Arc::new(claims),
                    exp,
                    until_ms,
                })),
                Err(refused @ Failure::Refused(_)) => Some(Err(refused)),
                Err(_) => None,
            },
            KIND_INACTIVE => Some(Err(Failure::Inactive)),
            KIND_REFUSED => {
                let r = Refusal::ALL.get(usize::from(*payload.first()?))?;
                Some(Err(Failure::Refused(*r)))
            }
            _ => None,
        }
    }

    /// The call that introspects `token` at `issuer`; `Err` while the endpoint is left alone
    /// after failures (the request gets 503).
    pub fn request(
        &self,
        issuer: usize,
        token: &str,
        now_ms: u64,
    ) -> Result<Result<HttpCall, NoRandomness>, Failure> {
        let Some(site) = self.sites.get(issuer).and_then(Option::as_ref) else {
            return Err(Failure::Unavailable("no introspection endpoint"));
        };
        if now_ms < site.resume_at_ms {
            return Err(Failure::Unavailable(
                "the introspection endpoint failed recently; retrying after a pause",
            ));
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        site.endpoint.append_credentials(&mut form);
        Ok(site.endpoint.call(form.finish(), now_ms / 1000))
    }

    /// Takes up the answer of `issuer` about the token of `key`: judged, shared with the other
    /// workers, counted; a failed call backs the endpoint off.
    pub fn on_answer<H: Host>(
        &mut self,
        host: &H,
        issuer: usize,
        key: &CacheKey,
        answer: &HttpAnswer,
        now_ms: u64,
    ) -> Result<Found, Failure> {
        let Some(site) = self.sites.get_mut(issuer).and_then(Option::as_mut) else {
            return Err(Failure::Unavailable("no introspection endpoint"));
        };
        let judged = judge(answer, &site.issuer, now_ms / 1000);
        let remember = |kind: u8, payload: &[u8], until: u64| {
            if until > now_ms {
                self.table.put(host, key, until, kind, payload);
            }
        };
        match judged {
            Ok(Active { claims, exp }) => {
                site.failures = 0;
                let by_exp = exp.map_or(u64::MAX, |e| {
                    e.saturating_mul(1000).saturating_sub(self.skew_ms)
                });
                let until_ms = now_ms.saturating_add(site.cache_ms).min(by_exp);
                if let Ok(json) = serde_json::to_vec(&claims) {
                    remember(KIND_ACTIVE, &json, until_ms);
                }
                let claims = Arc::new(claims);
                Ok(Found {
                    claims,
                    exp,
                    until_ms,
                })
            }
            Err(Failure::Inactive) => {
                site.failures = 0;
                host.metric(Metric::IntrospectionInactive, 1);
                remember(KIND_INACTIVE, &[], now_ms.saturating_add(self.negative_ms));
                Err(Failure::Inactive)
            }
            Err(Failure::Refused(r)) => {
                site.failures = 0;
                let code = Refusal::ALL.iter().position(|x| *x == r).unwrap_or(0) as u8;
                remember(
                    KIND_REFUSED,
                    &[code],
                    now_ms.saturating_add(self.negative_ms),
                );
                Err(Failure::Refused(r))
            }
            Err(failure) => {
                host.metric(Metric::IntrospectionErrors, 1);
                // An answer about this one token that the filter cannot use is that token's
                // failure (502), never an outage for everyone else's tokens.
                let then = if let Failure::Nonsense(_) = failure {
                    "about one token; the endpoint stays in use".to_string()
                } else {
                    site.failures = site.failures.saturating_add(1);
                    let pause = backoff_ms(site.failures, MAX_BACKOFF_MS, now_ms);
                    site.resume_at_ms = now_ms.saturating_add(pause);
                    format!("next call in {pause} ms at the earliest")
                };
                let msg = format!(
                    "introspection at {} failed ({}); {then}",
                    site.issuer.issuer,
                    failure.description()
                );
                host.log(LogLevel::Warn, &msg);
                Err(failure)
            }
        }
    }

    fn issuer_name(&self, issuer: usize) -> &str {
        self.sites
            .get(issuer)
            .and_then(Option::as_ref)
            .map_or("", |s| s.issuer.issuer.as_str())
    }
}

#[cfg(test)]
mod tests;
