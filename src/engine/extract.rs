//! The route and extract stages: the route rule a request meets (its exchange profile, or a
//! bypass), then its subject token and, for a delegation with a header actor, its actor token.

use super::setup::Setup;
use crate::caller::{self, Subject};
use crate::config::RouteAction;
use crate::host::{Host, RequestHeaders};
use crate::metrics::Metric;
use crate::route::Ambiguous;
use crate::verdict::Verdict;

/// What request `ctx` brings: its exchange profile, subject token and header actor token;
/// `Err` is its verdict (a bypass, no token, a malformed one, a path that reads as two routes).
pub(super) fn credentials<H, R>(
    s: &Setup,
    host: &H,
    ctx: u32,
    req: &R,
) -> Result<(usize, Subject, Option<String>), Verdict>
where
    H: Host,
    R: RequestHeaders + ?Sized,
{
    let profile = match s.routes.select(req) {
        Ok(RouteAction::Bypass) => {
            host.metric(Metric::Bypassed, 1);
            return Err(s.outcomes.pass());
        }
        Ok(RouteAction::Exchange(p)) => p,
        Err(Ambiguous) => return Err(s.outcomes.ambiguous_path(host, ctx)),
    };
    let rules = &s.config.subject_token;
    let subject = caller::subject(req, rules).map_err(|why| {
        // A route whose policy asks for anything never passes a request without a token.
        let open = s.rules.permits(s.client.profiles[profile].policy, None);
        s.outcomes.no_token(host, ctx, why, open)
    })?;
    let actor = match s.client.profiles[profile].actor_header() {
        Some(name) => match caller::actor(req, name, rules.max_bytes) {
            Some(t) => Some(t),
            None => {
                return Err(s
                    .outcomes
                    .invalid_token(host, "actor token missing or malformed"))
            }
        },
        None => None,
    };
    Ok((profile, subject, actor))
}
