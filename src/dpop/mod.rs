//! Sender-constrained tokens at the edge (RFC 9449 DPoP): a proof checked against the request
//! and its token (`proof.rs`), and the table of proofs seen, shared by the workers
//! (`replay.rs`).

mod proof;
mod replay;

pub use proof::*;
pub use replay::*;

/// Test helpers shared with the engine's stories.
#[cfg(test)]
pub(crate) mod tests_support {
    use serde_json::{json, Value};

    use crate::jwks::tests::TestKeys;

    /// The public JWK of `keys`' key for `alg` (ES256: P-256, EdDSA: Ed25519, else RSA).
    pub fn public_jwk(keys: &TestKeys, alg: &str) -> Value {
        let mut jwk = match alg {
            "ES256" => keys.ec_jwk("x"),
            "EdDSA" => keys.ed_jwk("x"),
            _ => keys.rsa_jwk("x"),
        };
        jwk.as_object_mut().map(|m| m.remove("kid"));
        jwk
    }

    /// The RFC 7638 thumbprint of `keys`' key for `alg`.
    pub fn jkt(keys: &TestKeys, alg: &str) -> String {
        use jwt_compact::jwk::JsonWebKey;
        use serde::Deserialize;
        let jwk = public_jwk(keys, alg);
        let jwk = JsonWebKey::deserialize(&jwk).unwrap();
        super::proof_thumbprint(&jwk)
    }

    /// A proof signed with `keys` for `alg`, for `method` and `htu`, issued at `iat` for `token`;
    /// `edit` changes the header and claims before signing.
    pub fn proof(
        keys: &TestKeys,
        alg: &str,
        (method, htu): (&str, &str),
        (iat, token): (u64, &str),
        edit: impl FnOnce(&mut Value, &mut Value),
    ) -> String {
        let mut header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(keys, alg)});
        let mut claims = json!({
            "jti": format!("{iat}-{method}-{htu}-{}", rand_jti()),
            "htm": method, "htu": htu, "iat": iat,
            "ath": super::token_hash(token),
        });
        edit(&mut header, &mut claims);
        keys.sign_with_header(&header, &claims)
    }

    fn rand_jti() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}
