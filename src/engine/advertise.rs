//! RFC 9728 at the engine's edge: with `protected_resource`, the filter answers the metadata
//! document itself, and every 401 it sends names the metadata URL as the request's client
//! reaches it (remembered while a request waits).

use std::collections::HashMap;

use crate::config::Config;
use crate::host::RequestHeaders;
use crate::resource::ResourceMetadata;
use crate::verdict::Verdict;

/// The metadata, and the URL each parked request's 401 would name.
pub(super) struct Advertiser {
    metadata: Option<ResourceMetadata>,
    urls: HashMap<u32, String>,
}

impl Advertiser {
    /// The advertiser of `config`: silent without `protected_resource`.
    pub(super) fn new(config: &Config) -> Self {
        Advertiser {
            metadata: config
                .protected_resource
                .as_ref()
                .map(ResourceMetadata::new),
            urls: HashMap::new(),
        }
    }

    /// Whether the metadata is configured.
    pub(super) fn enabled(&self) -> bool {
        self.metadata.is_some()
    }

    /// The metadata document, when `req` asks for it.
    pub(super) fn answer<R: RequestHeaders + ?Sized>(&self, req: &R) -> Option<Verdict> {
        let reply = self.metadata.as_ref()?.answer(req)?;
        Some(Verdict::Respond(reply))
    }

    /// A new request's verdict: a 401 names the metadata now; a parked request keeps its URL
    /// for the verdict it gets later.
    pub(super) fn at_start<R>(&mut self, ctx: u32, req: &R, verdict: Verdict) -> Verdict
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
                self.urls.insert(ctx, m.url_for(req));
                Verdict::Pause
            }
            other => other,
        }
    }

    /// Verdicts for parked requests: each 401 names its request's metadata URL.
    pub(super) fn later(&self, mut out: Vec<(u32, Verdict)>) -> Vec<(u32, Verdict)> {
        if self.metadata.is_none() {
            return out;
        }
        for (ctx, verdict) in &mut out {
            if let (Verdict::Respond(reply), Some(url)) = (verdict, self.urls.get(ctx)) {
                reply.advertise(url);
            }
        }
        out
    }

    /// Request `ctx` ended.
    pub(super) fn forget(&mut self, ctx: u32) {
        self.urls.remove(&ctx);
    }
}
