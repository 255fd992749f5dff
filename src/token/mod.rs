//! Reading the caller's token: extraction from the request header, verification of a JWT
//! against trusted issuers (RFC 7519/7515, RFC 8725), the unverified `exp` of a JWT (only ever
//! used to shorten a cache lifetime), and the short hash that logs carry.

mod extract;
mod jwt;
mod log;
mod unverified;

pub use extract::*;
pub use jwt::*;
pub use log::*;
pub use unverified::*;

/// Test helpers shared with other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use jwt_compact::UntrustedToken;

    /// One claim of a JWT, unverified, as JSON.
    pub fn claim(token: &str, name: &str) -> serde_json::Value {
        UntrustedToken::new(token)
            .unwrap()
            .deserialize_claims_unchecked::<serde_json::Value>()
            .unwrap()
            .custom[name]
            .clone()
    }
}

#[cfg(test)]
mod tests;
