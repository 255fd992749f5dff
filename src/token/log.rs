//! How logs name a token: a short, non-reversible tag, never the token.

use sha2::{Digest, Sha256};

use crate::host::{Host, LogLevel};

/// A debug line about request (or call) `ctx` naming its token by [`fingerprint`], never the
/// token itself.
pub fn log_debug<H: Host>(host: &H, ctx: u32, token: &str, what: &str) {
    if host.debug_enabled() {
        let fp = fingerprint(token);
        host.log(LogLevel::Debug, &format!("ctx={ctx} token={fp} {what}"));
    }
}

/// A short, non-reversible tag for a token, for log lines.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}
