//! RFC 9728 at the engine's edge: with `protected_resource`, every 401 the filter sends names
//! the metadata URL as the request's client reaches it (remembered while a request waits).

use super::Engine;
use crate::host::RequestHeaders;
use crate::verdict::Verdict;

impl Engine {
    /// A new request's verdict: a 401 names the metadata now; a parked request keeps its URL
    /// for the verdict it gets later.
    pub(super) fn advertise_at_start<R>(&mut self, ctx: u32, req: &R, verdict: Verdict) -> Verdict
    where
        R: RequestHeaders + ?Sized,
    {
        let Some(m) = &self.metadata else {
            return verdict;
        };
        match verdict {
            Verdict::Respond(mut reply) => {
                reply.advertise(&m.url_for(req));
                Verdict::Respond(reply)
            }
            Verdict::Pause => {
                self.advertised.insert(ctx, m.url_for(req));
                Verdict::Pause
            }
            other => other,
        }
    }

    /// Verdicts for parked requests: each 401 names its request's metadata URL.
    pub(super) fn advertise(&self, mut out: Vec<(u32, Verdict)>) -> Vec<(u32, Verdict)> {
        if self.metadata.is_none() {
            return out;
        }
        for (ctx, verdict) in &mut out {
            if let (Verdict::Respond(reply), Some(url)) = (verdict, self.advertised.get(ctx)) {
                reply.advertise(url);
            }
        }
        out
    }
}
