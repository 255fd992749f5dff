//! Why a subject token was refused, with the text the client is shown: the reasons are counted
//! per kind (see [`crate::metrics`]) and never carry the token.

/// Why a subject JWT was refused. The description is safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwtError {
    /// Not three base64url segments of JSON, or claims of the wrong shape.
    Malformed,
    /// No `exp` claim.
    MissingExp,
    /// `alg` is `none`, HMAC, unsupported, not on the issuer's list, or not the key's.
    Algorithm,
    /// `iss` missing or not a trusted issuer.
    UntrustedIssuer,
    /// No key of the issuer matches the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    NotYetValid,
    /// `aud` names none of the issuer's audiences.
    Audience,
}

impl JwtError {
    /// Short text for `error_description`; never contains the token.
    pub fn description(self) -> &'static str {
        match self {
            JwtError::Malformed => "token is not a well-formed JWT",
            JwtError::MissingExp => "token has no exp claim",
            JwtError::Algorithm => "token algorithm not allowed",
            JwtError::UntrustedIssuer => "token issuer is not trusted",
            JwtError::UnknownKey => "token signing key is unknown",
            JwtError::Signature => "token signature is invalid",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::Audience => "token audience not accepted",
        }
    }
}
