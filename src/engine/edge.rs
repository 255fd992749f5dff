//! What the engine tells at its edge, as each verdict leaves it: with `protected_resource`, the
//! metadata document the filter answers itself and the metadata URL every 401 and 403 names
//! (RFC 9728, the URL remembered while a request waits); with `output.filter_state`, the
//! fields of each request's decision, from a note kept while it is decided.

use std::collections::HashMap;

use super::extract::Credentials;
use super::request::Wait;
use super::setup::Setup;
use crate::config::Config;
use crate::host::RequestHeaders;
use crate::report::{self, Decision, Path, Reporter};
use crate::resource::ResourceMetadata;
use crate::token::{self, Verified};
use crate::verdict::Verdict;

/// The metadata and each parked request's URL; the reporter and each request's note.
pub(super) struct Edge {
    metadata: Option<ResourceMetadata>,
    urls: HashMap<u32, String>,
    reporter: Reporter,
    notes: HashMap<u32, Decision>,
}

impl Edge {
    /// The edge of `config`: silent without `protected_resource` and `output.filter_state`.
    pub(super) fn new(config: &Config) -> Self {
        Edge {
            metadata: config
                .protected_resource
                .as_ref()
                .map(ResourceMetadata::new),
            urls: HashMap::new(),
            reporter: Reporter::new(config),
            notes: HashMap::new(),
        }
    }

    /// Whether it has anything to add to a verdict.
    pub(super) fn enabled(&self) -> bool {
        self.metadata.is_some() || self.reporter.enabled()
    }

    /// The metadata document, when `req` asks for it.
    pub(super) fn answer<R: RequestHeaders + ?Sized>(&self, req: &R) -> Option<Verdict> {
        let reply = self.metadata.as_ref()?.answer(req)?;
        Some(Verdict::Respond(reply))
    }

    /// Notes how request `ctx` came to a verdict the route and extract stages gave.
    pub(super) fn early(&mut self, ctx: u32, path: Path, verdict: Verdict) -> Verdict {
        self.note(ctx, |d| d.path = path);
        verdict
    }

    /// Notes what request `c` brings: its token's hash prefix and its token service.
    pub(super) fn start(&mut self, s: &Setup, c: &Credentials) {
        self.note(c.ctx, |d| {
            d.token_id = Some(token::fingerprint(c.subject.token()));
            let service = s.client.profiles[c.profile].service;
            d.service = Some(s.config.service_name(service).to_string());
        });
    }

    /// Notes who request `ctx`'s verified token names.
    pub(super) fn identify(&mut self, ctx: u32, v: &Verified, token: &str) {
        if self.reporter.wants_identity() {
            self.note(ctx, |d| d.identity = Some(report::identity(v, token)));
        }
    }

    /// Notes that request `ctx` waits (from `now` on, at the first wait), and for what.
    pub(super) fn parked(&mut self, ctx: u32, wait: &Wait, now: u64) {
        self.note(ctx, |d| {
            d.waiting_since.get_or_insert(now);
            let exchange = matches!(wait, Wait::Flight(_) | Wait::Actor(_) | Wait::Consent(_));
            d.exchanged |= exchange;
        });
    }

    /// A new request's verdict: a 401 or 403 names the metadata now, and a final verdict
    /// carries the decision; a parked request keeps its URL and note for the verdict it gets
    /// later.
    pub(super) fn at_start<R>(&mut self, (ctx, now): (u32, u64), req: &R, v: Verdict) -> Verdict
    where
        R: RequestHeaders + ?Sized,
    {
        let mut verdict = v;
        if let Some(m) = &self.metadata {
            match &mut verdict {
                Verdict::Respond(reply) => reply.advertise(&m.url_for(req)),
                Verdict::Pause => {
                    self.urls.insert(ctx, m.url_for(req));
                }
                Verdict::Continue(_) => {}
            }
        }
        self.report(ctx, &mut verdict, now);
        verdict
    }

    /// Verdicts for parked requests: each 401 and 403 names its request's metadata URL, and
    /// each carries its request's decision.
    pub(super) fn later(&mut self, mut out: Vec<(u32, Verdict)>, now: u64) -> Vec<(u32, Verdict)> {
        for (ctx, verdict) in &mut out {
            if let (Verdict::Respond(reply), Some(url)) = (&mut *verdict, self.urls.get(ctx)) {
                reply.advertise(url);
            }
            self.report(*ctx, verdict, now);
        }
        out
    }

    /// Request `ctx` ended.
    pub(super) fn forget(&mut self, ctx: u32) {
        self.urls.remove(&ctx);
        self.notes.remove(&ctx);
    }

    /// The decision of request `ctx` in its final `verdict`; its note ends there.
    fn report(&mut self, ctx: u32, verdict: &mut Verdict, now: u64) {
        if !self.reporter.enabled() || matches!(verdict, Verdict::Pause) {
            return;
        }
        let note = self.notes.remove(&ctx).unwrap_or_default();
        self.reporter.write(verdict, &note, now);
    }

    /// Changes the note of request `ctx`, when decisions are reported.
    fn note(&mut self, ctx: u32, change: impl FnOnce(&mut Decision)) {
        if self.reporter.enabled() {
            change(self.notes.entry(ctx).or_default());
        }
    }
}
