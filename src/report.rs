//! What the filter tells the rest of Envoy about each request it decides (`output.filter_state`):
//! the fields of its decision, written beside the verdict for the glue to leave in filter
//! state, where access logs, RBAC and rate limits read them. Never a token.

use crate::config::{Config, StateField};
use crate::policy::Claims;
use crate::token::{self, Verified};
use crate::verdict::{HeaderOp, Verdict};

/// How a request came to its verdict, where the verdict alone does not show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    /// Through the stages (or refused on the way).
    #[default]
    Decided,
    /// A bypass rule let it through.
    Bypassed,
    /// It came without a token, and the route lets such requests through.
    PassedWithoutToken,
}

/// What the engine knows of a request when its verdict is handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// How it came to its verdict.
    pub path: Path,
    /// The hash prefix the filter's logs name its token by.
    pub token_id: Option<String>,
    /// The verified token's `sub` and `iss`.
    pub identity: Option<(Option<String>, Option<String>)>,
    /// The token service of its route.
    pub service: Option<String>,
    /// It waited on an exchange (a miss), not on keys or an introspection alone.
    pub exchanged: bool,
    /// Since when it waited on a call (ms).
    pub waiting_since: Option<u64>,
}

/// The fields a configuration leaves in filter state, and how to read a success's token.
#[derive(Debug, Clone)]
pub struct Reporter {
    fields: Vec<StateField>,
    output_header: String,
    prefix: String,
}

impl Reporter {
    /// The reporter of `config`.
    pub fn new(config: &Config) -> Self {
        Reporter {
            fields: config.output.filter_state.clone(),
            output_header: config.output.header.clone(),
            prefix: config.output.prefix.clone(),
        }
    }

    /// Whether any field is written.
    pub fn enabled(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether `sub` or `iss` is written (so a verification's identity is worth noting).
    pub fn wants_identity(&self) -> bool {
        (self.fields.iter()).any(|f| matches!(f, StateField::Sub | StateField::Iss))
    }

    /// Adds the configured fields of decision `d` to a final `verdict`, at `now_ms`.
    pub fn write(&self, verdict: &mut Verdict, d: &Decision, now_ms: u64) {
        let (outcome, error, minted) = match &*verdict {
            Verdict::Pause => return,
            Verdict::Continue(ops) => {
                let minted = ops.iter().find_map(|op| match op {
                    HeaderOp::Set(h, v) if *h == self.output_header => v.strip_prefix(&self.prefix),
                    _ => None,
                });
                (self.passed(d, minted), "", minted.map(str::to_string))
            }
            Verdict::Respond(reply) => (refused(reply.status, reply.error), reply.error, None),
        };
        let mut state = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let value = match field {
                StateField::Outcome => Some(outcome.to_string()),
                StateField::Error => (!error.is_empty()).then(|| error.to_string()),
                StateField::Sub => d.identity.as_ref().and_then(|(s, _)| s.clone()),
                StateField::Iss => d.identity.as_ref().and_then(|(_, i)| i.clone()),
                StateField::Actor => minted.as_deref().and_then(token::unverified_act_sub),
                StateField::Service => d.service.clone(),
                StateField::StsMs => d
                    .waiting_since
                    .map(|t| now_ms.saturating_sub(t).to_string()),
                StateField::TokenId => d.token_id.clone(),
            };
            if let Some(v) = value {
                state.push((field.name(), v));
            }
        }
        match verdict {
            Verdict::Continue(ops) => {
                ops.extend(state.into_iter().map(|(f, v)| HeaderOp::State(f, v)));
            }
            Verdict::Respond(reply) => reply.state = state,
            Verdict::Pause => {}
        }
    }

    /// The outcome of a request that goes on, `minted` the token it carries.
    fn passed(&self, d: &Decision, minted: Option<&str>) -> &'static str {
        match (d.path, minted) {
            (Path::Bypassed, _) => "bypassed",
            (Path::PassedWithoutToken, _) => "passed_without_token",
            (Path::Decided, None) => "failed_open",
            // The caller's own token passed on: a forwarding issuer's.
            (Path::Decided, Some(m)) if d.token_id.as_deref() == Some(&token::fingerprint(m)) => {
                "forwarded"
            }
            (Path::Decided, Some(_)) if d.exchanged => "exchanged",
            (Path::Decided, Some(_)) => "cached",
        }
    }
}

/// The outcome of a local answer, by its status and error code.
fn refused(status: u32, error: &str) -> &'static str {
    match status {
        401 if error == "insufficient_user_authentication" => "step_up",
        400 | 401 => "rejected",
        403 => "denied",
        503 => "unavailable",
        _ => "failed",
    }
}

/// The `sub` and `iss` of verified token `v` (an introspection answer's, or the JWT's own).
pub fn identity(v: &Verified, token: &str) -> (Option<String>, Option<String>) {
    let read = |c: &Claims| {
        let text = |k: &str| c.get(k).and_then(|x| x.as_str()).map(str::to_string);
        (text("sub"), text("iss"))
    };
    match v.claims.as_deref() {
        Some(c) => read(c),
        None => token::claims(token).map_or((None, None), |c| read(&c)),
    }
}
