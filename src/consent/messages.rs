//! What goes into the consent table and comes out of it: the request that asks, what it should
//! do, the calls the table wants sent, and what became of a consent.

use crate::cache::CacheKey;
use crate::caller::TraceContext;
use crate::sts::{Minted, StsFailure};

/// A request waiting for a consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentWaiter {
    /// Its context.
    pub ctx: u32,
    /// When it stops waiting (ms).
    pub deadline_ms: u64,
}

/// What became of a consent (named by its key), or of requests waiting for one; each event
/// carries the waiters it ends.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsentEvent {
    /// The user approved: the token, for the cache and the waiters.
    Approved {
        key: CacheKey,
        /// The minted token.
        minted: Minted,
        /// The subject's `exp`, capping the cache lifetime.
        subject_exp: Option<u64>,
        waiters: Vec<ConsentWaiter>,
    },
    /// The user said no, the request lapsed, or the STS refused: remembered when it is a
    /// rejection, then the error table.
    Refused {
        key: CacheKey,
        failure: StsFailure,
        /// The subject's `exp`, capping how long a rejection is remembered.
        subject_exp: Option<u64>,
        waiters: Vec<ConsentWaiter>,
    },
    /// Another worker's consent ended: the waiters find its outcome in the cache.
    Settled {
        key: CacheKey,
        waiters: Vec<ConsentWaiter>,
    },
    /// These waited `wait_s` in vain: 503 with `retry-after`; the consent goes on.
    TimedOut(Vec<ConsentWaiter>),
}

impl ConsentEvent {
    /// The contexts of the requests whose wait it ends.
    pub fn waiting(&self) -> Vec<u32> {
        let waiters = match self {
            ConsentEvent::Approved { waiters, .. }
            | ConsentEvent::Refused { waiters, .. }
            | ConsentEvent::Settled { waiters, .. }
            | ConsentEvent::TimedOut(waiters) => waiters,
        };
        waiters.iter().map(|w| w.ctx).collect()
    }
}

/// A request that needs the user's consent.
#[derive(Debug, Clone)]
pub struct Asking {
    /// The consent's key: the user (or the hint token) and everything that shapes the token.
    pub key: CacheKey,
    /// Who holds the consent for the share rule: a hash of the subject (issuer and `sub`).
    pub client: [u8; 32],
    /// The request's context.
    pub ctx: u32,
    /// Its exchange profile.
    pub profile: usize,
    /// The subject's `exp` (s).
    pub subject_exp: Option<u64>,
    /// The `login_hint` (or hint token) the backchannel request sends.
    pub hint: String,
    /// The request's trace context, for the backchannel request made for it.
    pub trace: TraceContext,
}

/// A call a consent wants the engine to send from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The consent's key.
    pub key: CacheKey,
    /// Its exchange profile.
    pub profile: usize,
    /// Which call.
    pub call: Want,
}

/// The two calls of a consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The backchannel authentication request.
    Backchannel {
        /// The `login_hint` (or hint token).
        hint: String,
        /// The `client_notification_token`, in ping mode.
        notification_token: Option<String>,
        /// The trace context of the request that asked.
        trace: TraceContext,
    },
    /// A token request for the pending consent.
    Poll {
        /// The consent's `auth_req_id`.
        auth_req_id: String,
    },
}

/// What a request for consent should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// It waits: for a consent asked here (the tick sends the backchannel request) or in
    /// another worker.
    Waiting,
    /// No slot is free for it now, or its client holds its share: 503.
    Busy,
}
