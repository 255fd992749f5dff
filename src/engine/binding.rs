//! The binding stage, after trust and before policy and cache: a verified token bound to a key
//! (`cnf.jkt`, RFC 9449) goes on only with a fresh DPoP proof by that key for this request, one
//! bound to a certificate (`cnf["x5t#S256"]`, RFC 8705 §3) only on a connection with that
//! client certificate, and a bound token never goes on as a plain bearer token. It owns the
//! table of proofs seen.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::request::{Next, Request};
use super::setup::Setup;
use crate::caller::DpopRequest;
use crate::config::Config;
use crate::dpop::{self, Recorded, ReplayTable, Target};
use crate::host::{Host, LogLevel};
use crate::metrics::Metric;
use crate::reply::{LocalReply, Schemes};
use crate::token::{self, Binding, Verified};
use crate::verdict::Verdict;

/// The binding stage of one worker.
pub(super) struct BindingCheck {
    replay: ReplayTable,
    /// `dpop.algorithms`, as the challenges name them.
    algs: String,
    /// Some trusted issuer enforces bindings.
    reads_certificates: bool,
}

impl BindingCheck {
    /// The stage for `config`.
    pub(super) fn new(config: &Config) -> Self {
        let names: Vec<&str> = config.dpop.algorithms.iter().map(|a| a.name()).collect();
        BindingCheck {
            replay: ReplayTable::new(config.dpop.replay_entries),
            algs: names.join(" "),
            reads_certificates: config.trusted_issuers.iter().any(|t| t.enforce_binding),
        }
    }

    /// Whether a request's client certificate is read: some issuer's tokens may be bound to one.
    pub(super) fn reads_certificates(&self) -> bool {
        self.reads_certificates
    }

    /// The accepted proof algorithms, space-separated.
    pub(super) fn algs(&self) -> &str {
        &self.algs
    }

    /// Whether `req` may go on as it presents its token.
    pub(super) fn check<H: Host>(&self, s: &Setup, host: &H, req: &Request) -> Next<()> {
        let required = s.config.exchanges[req.profile].dpop_required;
        let schemes = Schemes {
            used_dpop: req.dpop.is_some(),
            both: !required,
            algs: &self.algs,
        };
        let binding = req.verified.as_ref().map_or(&Binding::NONE, |v| &v.binding);
        let refused = match &req.dpop {
            None if binding.jkt().is_some() || binding.unknown() => {
                Some("a DPoP-bound token must be sent with the DPoP scheme")
            }
            None if required => Some("this route takes DPoP-bound tokens only"),
            None => None,
            Some(d) => match self.proof(s, host, req, d, schemes) {
                Err(verdict) => return Next::Stop(verdict),
                Ok(()) => None,
            },
        };
        if let Some(why) = refused {
            return Next::Stop(self.refuse(s, host, req, Refused::Token(why), schemes));
        }
        match (binding.x5t(), &req.peer_certificate) {
            (None, _) => Next::Go(()),
            (Some(x5t), Some(hex)) if same_certificate(x5t, hex) => Next::Go(()),
            (Some(_), None) => {
                let why = "a certificate-bound token needs its client certificate";
                Next::Stop(self.refuse(s, host, req, Refused::Token(why), schemes))
            }
            (Some(_), Some(_)) => {
                let why = "the client certificate is not the one the token is bound to";
                Next::Stop(self.refuse(s, host, req, Refused::Token(why), schemes))
            }
        }
    }

    /// A DPoP request's proof, checked against its verified token and recorded as used.
    fn proof<H: Host>(
        &self,
        s: &Setup,
        host: &H,
        req: &Request,
        d: &DpopRequest,
        schemes: Schemes<'_>,
    ) -> Result<(), Verdict> {
        let Some(v) = req.verified.as_ref() else {
            let why = "a DPoP-bound token must come from a trusted issuer";
            return Err(self.refuse(s, host, req, Refused::Token(why), schemes));
        };
        let proof = d
            .proof
            .as_deref()
            .map_err(|why| self.refuse(s, host, req, Refused::Proof(why), schemes))?;
        let target = Target {
            method: &d.method,
            scheme: &d.scheme,
            authority: &d.authority,
            path: &d.path,
            token: req.token(),
        };
        let rules = &s.config.dpop;
        let now_s = host.now_ms() / 1000;
        let proven = dpop::verify(proof, &target, rules, now_s)
            .map_err(|e| self.refuse(s, host, req, Refused::Proof(e.describe()), schemes))?;
        match v.binding.jkt() {
            Some(jkt) if jkt == proven.jkt => {}
            Some(_) => {
                let why = "DPoP proof key is not the one the token is bound to";
                return Err(self.refuse(s, host, req, Refused::Proof(why), schemes));
            }
            None => return Err(self.unbound_dpop(s, host, req, v, schemes)),
        }
        // Kept until the proof could no longer be accepted.
        let last_s = proven.iat + rules.max_age_s + rules.clock_skew_s + 1;
        let until_ms = last_s.saturating_mul(1000);
        match self
            .replay
            .record(host, (&proven.jkt, &proven.jti), until_ms)
        {
            Recorded::New => {
                host.metric(Metric::DpopVerified, 1);
                Ok(())
            }
            Recorded::Seen => Err(self.refuse(
                s,
                host,
                req,
                Refused::Proof("DPoP proof was used before"),
                schemes,
            )),
            Recorded::Full => {
                host.log(
                    LogLevel::Warn,
                    "the DPoP replay table is full: proofs are refused until records expire \
                     (raise dpop.replay_entries)",
                );
                // Never let through unchecked, whatever `on_sts_unavailable` says.
                let why = "DPoP proofs cannot be recorded now";
                Err(Verdict::Respond(LocalReply::unavailable(why)))
            }
        }
    }

    /// A token sent with the DPoP scheme that is not bound to a key.
    fn unbound_dpop<H: Host>(
        &self,
        s: &Setup,
        host: &H,
        req: &Request,
        v: &Verified,
        schemes: Schemes<'_>,
    ) -> Verdict {
        let why = match v.binding.x5t() {
            Some(_) => "a certificate-bound token cannot be sent with the DPoP scheme",
            None => "the token is not DPoP-bound",
        };
        self.refuse(s, host, req, Refused::Token(why), schemes)
    }

    /// A refusal of the proof or of the token's binding, its reason in the debug log.
    fn refuse<H: Host>(
        &self,
        s: &Setup,
        host: &H,
        req: &Request,
        refused: Refused<'_>,
        schemes: Schemes<'_>,
    ) -> Verdict {
        let (Refused::Proof(why) | Refused::Token(why)) = refused;
        token::log_debug(host, req.ctx, req.token(), &format!("refused: {why}"));
        match refused {
            Refused::Proof(why) => s.outcomes.bad_proof(host, why, schemes),
            Refused::Token(why) => s.outcomes.unbound(host, why, schemes),
        }
    }
}

/// What a refusal is about, and why.
#[derive(Debug, Clone, Copy)]
enum Refused<'a> {
    /// The DPoP proof (`invalid_dpop_proof`).
    Proof(&'a str),
    /// The token's binding (`invalid_token`).
    Token(&'a str),
}

/// Whether a certificate's hex SHA-256 digest (as Envoy gives it) is the base64url thumbprint
/// `x5t`.
fn same_certificate(x5t: &str, hex: &str) -> bool {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.is_some_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(b) == x5t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_digest_is_compared_as_base64url() {
        let hex = "a1".repeat(32);
        let x5t = URL_SAFE_NO_PAD.encode([0xa1u8; 32]);
        assert!(same_certificate(&x5t, &hex));
        assert!(same_certificate(&x5t, &hex.to_uppercase()));
        assert!(!same_certificate(&x5t, &"a2".repeat(32)));
        assert!(!same_certificate(&x5t, &hex[..62]));
        assert!(!same_certificate(&x5t, "zz"));
        assert!(!same_certificate(&x5t, "é"));
    }
}
