//! What the native glue does with the engine's answers: a callout's answer read for the engine,
//! verdicts posted to the workers of the requests they are for, and a final verdict carried out
//! on the stream whose hook is running (or a fault answered 500).

use std::collections::HashMap;

use super::envoy::{self, StreamPtr};
use super::ffi::{self, EnvoyBuffer, EnvoyHeader};
use super::{Filters, Parked};
use crate::host::{HttpAnswer, MAX_ANSWER_BYTES};
use crate::metrics::Metric;
use crate::reply::LocalReply;
use crate::verdict::{HeaderOp, Verdict};

/// A callout's answer as the engine reads it: no status when it failed.
pub fn read_answer(
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) -> HttpAnswer {
    let status = (result == ffi::SUCCESS)
        .then(|| envoy::header_pairs(headers, headers_size))
        .and_then(|pairs| {
            let (_, v) = pairs.into_iter().find(|(n, _)| n == b":status")?;
            std::str::from_utf8(&v).ok()?.parse::<u16>().ok()
        });
    let chunks: &[EnvoyBuffer] = if body.is_null() || body_size == 0 {
        &[]
    } else {
        // SAFETY: Envoy lends `body_size` buffers at `body` for this hook.
        unsafe { std::slice::from_raw_parts(body, body_size) }
    };
    let total: usize = chunks.iter().map(|c| c.length).sum();
    let too_large = total > MAX_ANSWER_BYTES;
    let body = if status.is_none() || too_large {
        Vec::new()
    } else {
        chunks.iter().flat_map(envoy::buffer_bytes).collect()
    };
    HttpAnswer {
        status,
        body,
        too_large,
    }
}

/// Posts verdicts to the requests they are for, each on its own worker.
pub fn post(parked: &mut HashMap<u32, Parked>, verdicts: Vec<(u32, Verdict)>) {
    for (ctx, verdict) in verdicts {
        if let Some(p) = parked.get_mut(&ctx) {
            p.pending.push(verdict);
            p.scheduler.commit_filter(u64::from(ctx));
        }
    }
}

/// Carries out a final verdict on the stream whose hook is running.
pub fn apply(stream: StreamPtr, verdict: &Verdict, stopped: bool) {
    match verdict {
        Verdict::Continue(ops) => {
            apply_ops(stream, ops);
            if stopped {
                stream.continue_decoding();
            }
        }
        Verdict::Respond(reply) => respond(stream, reply),
        Verdict::Pause => {}
    }
}

pub fn apply_ops(stream: StreamPtr, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Set(name, value) => stream.set_request_header(name, Some(value)),
            HeaderOp::Remove(name) => stream.set_request_header(name, None),
            HeaderOp::State(field, value) => set_state(stream, field, value),
        }
    }
}

/// One field of the decision in filter state, under the wasm module's name, so one access-log
/// format serves either delivery.
fn set_state(stream: StreamPtr, field: &str, value: &str) {
    stream.set_filter_state(&format!("wasm.token_exchange.{field}"), value);
}

pub fn respond(stream: StreamPtr, reply: &LocalReply) {
    for (field, value) in &reply.state {
        set_state(stream, field, value);
    }
    stream.send_response(reply.status, &reply.headers, &reply.body);
}

/// Answers a request whose hook panicked: 500, counted.
pub fn fault(filters: &Filters, stream: StreamPtr) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        filters
            .metrics
            .count(Some(stream), filters.envoy, Metric::Panics, 1);
        envoy::log(
            ffi::LOG_WARN,
            "token-exchange: a fault in the filter answered 500",
        );
        let reply = LocalReply::unavailable("internal fault");
        stream.send_response(500, &reply.headers, &reply.body);
    }));
}
