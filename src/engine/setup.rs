//! What a configuration compiles to and every stage reads but none changes: the configuration,
//! the token services' endpoints and profiles, the route rules, the policies and claim headers,
//! the verdicts; and the one way an answer is handed out.

use crate::cache::Cached;
use crate::client::Client;
use crate::config::{Config, ConfigError};
use crate::freshness::{Freshness, Served};
use crate::host::Host;
use crate::metrics::Metric;
use crate::outcomes::Outcomes;
use crate::policy::Rules;
use crate::route::Routes;
use crate::token::Verified;
use crate::verdict::Verdict;

/// The compiled configuration of one worker, read by every stage.
pub(super) struct Setup {
    pub(super) config: Config,
    pub(super) client: Client,
    pub(super) routes: Routes,
    /// The access policies and claim headers.
    pub(super) rules: Rules,
    pub(super) outcomes: Outcomes,
}

impl Setup {
    /// Compiles `config`; a key that does not parse or a route prefix that could never match
    /// refuses it.
    pub(super) fn compile(config: Config) -> Result<Setup, ConfigError> {
        Ok(Setup {
            client: Client::compile(&config)?,
            routes: Routes::compile(&config.routes)?,
            rules: Rules::new(&config),
            outcomes: Outcomes::new(&config),
            config,
        })
    }

    /// The token services the per-service counters are kept for: none without
    /// `token_services`, else `sts` and each named one, in service order.
    pub(super) fn counted_services(&self) -> Vec<String> {
        let config = &self.config;
        if config.token_services.is_empty() {
            return Vec::new();
        }
        (0..config.service_count())
            .map(|i| config.service_name(i).to_string())
            .collect()
    }

    /// With `token_services`: one call to token service `service`, sent or failed.
    pub(super) fn count_service<H: Host>(&self, host: &H, service: usize, sent: bool) {
        if self.config.token_services.is_empty() {
            return;
        }
        let n = u8::try_from(service).unwrap_or(u8::MAX);
        host.metric(Metric::ServiceCalls(n), u64::from(sent));
        if !sent {
            host.metric(Metric::ServiceErrors(n), 1);
        }
    }

    /// Whether the worker memo may still answer on `profile` for a token verified as `v`, at
    /// `now_ms`: the profile's policy still holds (a `max_age_s` ends as time passes). A bound
    /// token is never in the memo (`Request::memo_may_hold`).
    pub(super) fn memo_may_serve(&self, profile: usize, v: &Verified, now_ms: u64) -> bool {
        let policy = self.client.profiles[profile].policy;
        self.rules.permits(policy, Some(&v.facts), now_ms / 1000)
    }

    /// Hands the requests `ctxs` the answer `value` (a token, or a remembered rejection) of the
    /// cache entry `entry`, if it was kept: the verdict, and the note in `freshness` that lets
    /// the upstream's 401 evict that entry. Every path that hands out an answer goes through
    /// here.
    pub(super) fn serve<H: Host>(
        &self,
        freshness: &mut Freshness,
        host: &H,
        ctxs: &[u32],
        (value, entry): (&Cached, Option<Served>),
        (subject, verified): (&str, Option<&Verified>),
    ) -> Verdict {
        if let Some(entry) = entry {
            for ctx in ctxs {
                freshness.served(*ctx, value, entry);
            }
        }
        self.outcomes.cached(host, value, subject, verified)
    }
}
