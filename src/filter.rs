//! The proxy-wasm glue, the only file that imports `proxy_wasm`: a root context that reads the
//! configuration and owns the per-worker [`Engine`], and HTTP contexts that feed it request
//! headers, STS answers and the upstream's status, and carry out its verdicts. Host calls go
//! through [`crate::abi`], which hands back every status and reads bytes: nothing here can panic
//! on a host's answer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as WasmLogLevel, Status};

use crate::abi;
use crate::config::Config;
use crate::engine::Engine;
use crate::host::{
    self, Host, HostError, HttpAnswer, HttpCall, LogLevel, RequestHeaders, Unusable,
    MAX_ANSWER_BYTES,
};
use crate::metrics::{Metric, MetricKind};
use crate::reply::LocalReply;
use crate::verdict::{HeaderOp, Verdict};

/// How often (ms) the root dispatches lost STS calls again and looks after the issuers' keys.
const TICK_MS: u32 = 100;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(WasmLogLevel::Trace);
    proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
        Box::new(Root { id: root_id, shared: Rc::new(RefCell::new(None)) })
    });
}}

/// The engine and the metric ids, shared by the root and the HTTP contexts of one worker.
struct Worker {
    engine: Engine,
    host: ProxyHost,
}

type SharedWorker = Rc<RefCell<Option<Worker>>>;

/// [`Host`] over proxy-wasm host calls. Failures map to [`HostError`], never to a panic.
/// Counters are summed here and flushed to Envoy on the root's tick: two host calls fewer on
/// every request.
struct ProxyHost {
    metric_ids: Vec<Option<u32>>,
    pending: RefCell<Vec<u64>>,
    debug: bool,
}

impl ProxyHost {
    /// Defines every metric, and the per-service counters of token services `services`.
    fn new(services: &[String]) -> Self {
        let mut metric_ids: Vec<Option<u32>> = Metric::all()
            .iter()
            .map(|m| {
                let kind = match m.kind() {
                    MetricKind::Counter => 0,
                    MetricKind::Histogram => 2,
                };
                abi::define_metric(kind, m.name()).ok()
            })
            .collect();
        for (_, name) in Metric::per_service(services) {
            metric_ids.push(abi::define_metric(0, &name).ok());
        }
        // Trace is 0, debug 1.
        let debug = matches!(abi::log_level(), Ok(0 | 1));
        let pending = RefCell::new(vec![0; metric_ids.len()]);
        ProxyHost {
            metric_ids,
            pending,
            debug,
        }
    }

    /// Hands the summed counters to Envoy.
    fn flush_metrics(&self) {
        let mut pending = self.pending.borrow_mut();
        for (i, n) in pending.iter_mut().enumerate() {
            if *n > 0 {
                if let Some(Some(id)) = self.metric_ids.get(i) {
                    let _ = abi::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                }
                *n = 0;
            }
        }
    }
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        abi::now_ns().map_or(0, |ns| ns / 1_000_000)
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        abi::shared_data(key).ok().flatten()
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        abi::set_shared_data(key, value, cas.unwrap_or(0))
            .map_err(|s| HostError(format!("Envoy refused to store shared data: {s}")))
    }

    fn dispatch(&self, request: &HttpCall) -> Result<u32, HostError> {
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            (!request.body.is_empty()).then_some(request.body.as_bytes()),
            Vec::new(),
            Duration::from_millis(request.timeout_ms),
        )
        .map_err(|s| {
            let cluster = &request.cluster;
            HostError(match s {
                // Envoy's only bad argument for a call with its pseudo-headers set.
                Status::BadArgument => format!(
                    "Envoy has no cluster named {cluster} (add it to the bootstrap's clusters, \
                     in Istio a ServiceEntry)"
                ),
                other => format!(
                    "Envoy refused the call to cluster {cluster}: {}",
                    abi::Status(other as u32)
                ),
            })
        })
    }

    fn metric(&self, metric: Metric, value: u64) {
        match metric.kind() {
            MetricKind::Counter => {
                if let Some(n) = self.pending.borrow_mut().get_mut(metric.index()) {
                    *n += value;
                }
            }
            MetricKind::Histogram => {
                if let Some(Some(id)) = self.metric_ids.get(metric.index()) {
                    let _ = abi::record_metric(*id, value);
                }
            }
        }
    }

    fn debug_enabled(&self) -> bool {
        self.debug
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => 1,
            LogLevel::Info => 2,
            LogLevel::Warn => 3,
        };
        let _ = abi::log(level, message);
    }
}

/// Carries out verdicts for other contexts (requests that waited on a call) and for `own`.
fn deliver(verdicts: Vec<(u32, Verdict)>, own: Option<u32>) {
    for (ctx, verdict) in verdicts.iter().filter(|(c, _)| Some(*c) != own) {
        if abi::set_effective_context(*ctx).is_ok() {
            apply(verdict);
        }
    }
    if let Some(own) = own {
        if let Some((_, verdict)) = verdicts.iter().find(|(c, _)| *c == own) {
            if abi::set_effective_context(own).is_ok() {
                apply(verdict);
            }
        }
    }
}

/// Applies a final verdict to the effective context and lets the request go on.
fn apply(verdict: &Verdict) {
    match verdict {
        Verdict::Continue(ops) => {
            apply_ops(ops);
            let _ = abi::resume_request();
        }
        Verdict::Respond(reply) => respond(reply),
        Verdict::Pause => {}
    }
}

fn apply_ops(ops: &[HeaderOp]) {
    for op in ops {
        let _ = match op {
            HeaderOp::Set(name, value) => abi::set_header(abi::REQUEST_HEADERS, name, Some(value)),
            HeaderOp::Remove(name) => abi::set_header(abi::REQUEST_HEADERS, name, None),
            HeaderOp::State(field, value) => set_state(field, value),
        };
    }
}

/// One field of the decision in the request's filter state (`wasm.token_exchange.<field>`).
fn set_state(field: &str, value: &str) -> Result<(), abi::Status> {
    abi::set_property(&format!("token_exchange.{field}"), value.as_bytes())
}

/// Every `WWW-Authenticate` value of the upstream's answer (bytes that are not text are read
/// lossily: such a challenge never parses as one about the token).
fn response_challenges() -> Vec<String> {
    let Ok(bytes) = abi::header_pairs(abi::RESPONSE_HEADERS) else {
        return Vec::new();
    };
    host::parse_map(&bytes)
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"www-authenticate"))
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        .collect()
}

fn respond(reply: &LocalReply) {
    for (field, value) in &reply.state {
        let _ = set_state(field, value);
    }
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _ = abi::send_response(reply.status, &headers, reply.body.as_bytes());
}

/// The root context of one worker: configuration, engine, and the tick that re-dispatches calls
/// whose carrying request went away.
struct Root {
    id: u32,
    shared: SharedWorker,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        let verdicts = call_answer(&self.shared, None, token, headers, body);
        deliver(verdicts, None);
        let _ = abi::set_effective_context(self.id);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = abi::buffer(abi::PLUGIN_CONFIGURATION, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let loaded = Config::parse(&bytes, &|name| std::env::var(name).ok())
            .and_then(|config| Ok((config.summary(), Engine::new(config)?)));
        let services = match &loaded {
            Ok((_, engine)) => engine.counted_services(),
            Err(_) => Vec::new(),
        };
        let host = ProxyHost::new(&services);
        match loaded {
            Ok((summary, engine)) => {
                engine.on_start(&host);
                host.log(
                    LogLevel::Info,
                    &format!(
                        "token-exchange-wasm {} configured: {summary}",
                        env!("CARGO_PKG_VERSION"),
                    ),
                );
                *self.shared.borrow_mut() = Some(Worker { engine, host });
                let _ = abi::set_tick_period_ms(TICK_MS);
                true
            }
            Err(e) => {
                host.log(
                    LogLevel::Warn,
                    &format!("token-exchange-wasm refused its configuration: {e}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let verdicts = match self.shared.borrow_mut().as_mut() {
            Some(w) => {
                w.host.flush_metrics();
                w.engine.on_tick(&w.host)
            }
            None => return,
        };
        deliver(verdicts, None);
        let _ = abi::set_effective_context(self.id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            id: context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Reads a callout answer from the host and hands it to the engine. A call that failed has no
/// headers (`headers == 0`: reset, timeout, no upstream), and one cut off after its headers may
/// refuse the reads: either way the answer has no status, which the engine treats as an outage.
fn call_answer(
    shared: &SharedWorker,
    receiver: Option<u32>,
    token: u32,
    headers: usize,
    body_size: usize,
) -> Vec<(u32, Verdict)> {
    let status = if headers == 0 {
        None
    } else {
        abi::header(abi::CALL_RESPONSE_HEADERS, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
    };
    let too_large = body_size > MAX_ANSWER_BYTES;
    let body = if status.is_none() || too_large || body_size == 0 {
        Vec::new()
    } else {
        abi::buffer(abi::CALL_RESPONSE_BODY, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let answer = HttpAnswer {
        status,
        body,
        too_large,
    };
    match shared.borrow_mut().as_mut() {
        Some(w) => w.engine.on_http_answer(&w.host, receiver, token, &answer),
        None => Vec::new(),
    }
}

/// One HTTP request.
struct Request {
    id: u32,
    shared: SharedWorker,
}

/// Request headers read through host calls as bytes, one at a time; a value that is not text
/// is absent for [`RequestHeaders::header`] and unusable for a credential.
struct HostHeaders;

impl RequestHeaders for HostHeaders {
    fn header(&self, name: &str) -> Option<String> {
        self.token_header(name).ok().flatten()
    }

    fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        match abi::header(abi::REQUEST_HEADERS, name) {
            Ok(Some(bytes)) => host::text(bytes).map(Some),
            _ => Ok(None),
        }
    }

    fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        // The single-value read shows only the first copy; the whole map shows them all.
        let bytes = abi::header_pairs(abi::REQUEST_HEADERS).map_err(|_| Unusable::NotText)?;
        let pairs = host::parse_map(&bytes).ok_or(Unusable::NotText)?;
        host::single_of(pairs, name)
    }

    fn headers_among(&self, names: &[&str]) -> Vec<(String, String)> {
        let Ok(bytes) = abi::header_pairs(abi::REQUEST_HEADERS) else {
            return Vec::new();
        };
        host::parse_map(&bytes).map_or_else(Vec::new, |pairs| host::among(pairs, names))
    }

    fn peer_certificate_digest(&self) -> Option<String> {
        let path = ["connection", "sha256_peer_certificate_digest"];
        let bytes = abi::property(&path).ok().flatten()?;
        host::text(bytes).ok().filter(|d| !d.is_empty())
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        let verdicts = call_answer(&self.shared, Some(self.id), token, headers, body);
        deliver(verdicts, Some(self.id));
    }

    fn on_done(&mut self) -> bool {
        if let Some(w) = self.shared.borrow_mut().as_mut() {
            w.engine.on_request_done(self.id);
        }
        true
    }
}

impl HttpContext for Request {
    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(w) = self.shared.borrow_mut().as_mut() {
            // Only a request that carried a minted token reads its status.
            if w.engine.watches(self.id) {
                let status = abi::header(abi::RESPONSE_HEADERS, ":status")
                    .ok()
                    .flatten()
                    .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
                w.engine
                    .on_response(&w.host, self.id, status, response_challenges);
            }
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let verdict = match self.shared.borrow_mut().as_mut() {
            Some(w) => w.engine.on_request(&w.host, self.id, &HostHeaders),
            None => Verdict::Respond(LocalReply::unavailable("token exchange is not configured")),
        };
        match verdict {
            Verdict::Continue(ops) => {
                apply_ops(&ops);
                Action::Continue
            }
            Verdict::Pause => Action::Pause,
            Verdict::Respond(reply) => {
                respond(&reply);
                Action::Pause
            }
        }
    }
}
