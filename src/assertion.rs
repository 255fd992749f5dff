//! `private_key_jwt` client authentication (RFC 7523 §2.2): the filter's signing key and the
//! short-lived client assertions it signs for every call to the STS.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
#[cfg(feature = "private-key-jwt")]
use jwt_compact::alg::{Ed25519, Es256, Rsa};
#[cfg(feature = "private-key-jwt")]
use jwt_compact::{Algorithm, AlgorithmSignature};
#[cfg(feature = "private-key-jwt")]
use p256::pkcs8::DecodePrivateKey;
#[cfg(feature = "private-key-jwt")]
use rsa::pkcs1::DecodeRsaPrivateKey;

/// The `client_assertion_type` of a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid, in seconds (RFC 7523 asks for a short `exp`).
pub const LIFETIME_S: u64 = 60;

/// A private key the filter signs client assertions with (none in a build without the
/// `private-key-jwt` feature).
#[derive(Clone)]
pub enum SigningKey {
    /// ES256.
    #[cfg(feature = "private-key-jwt")]
    Es256(p256::ecdsa::SigningKey),
    /// RS256.
    #[cfg(feature = "private-key-jwt")]
    Rs256(Box<rsa::RsaPrivateKey>),
    /// EdDSA (Ed25519).
    #[cfg(feature = "private-key-jwt")]
    EdDsa(ed25519_compact::SecretKey),
}

impl SigningKey {
    /// Refuses every key: a build without the `private-key-jwt` feature signs nothing.
    #[cfg(not(feature = "private-key-jwt"))]
    pub fn from_pem(_alg: &str, _pem: &str) -> Result<SigningKey, String> {
        Err("needs a module built with the private-key-jwt feature (the default build)".to_string())
    }

    /// Reads a PEM key for `alg` (`ES256`: PKCS#8 or SEC1; `RS256`: PKCS#8 or PKCS#1;
    /// `EdDSA`: PKCS#8). The error never contains key material.
    #[cfg(feature = "private-key-jwt")]
    pub fn from_pem(alg: &str, pem: &str) -> Result<SigningKey, String> {
        let key = match alg {
            "ES256" => p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
                .or_else(|_| p256::SecretKey::from_sec1_pem(pem).map(Into::into))
                .map(SigningKey::Es256)
                .ok(),
            "RS256" => rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
                .ok()
                .filter(|k| rsa::traits::PublicKeyParts::size(k) >= 256)
                .map(|k| SigningKey::Rs256(Box::new(k))),
            "EdDSA" => ed25519_compact::SecretKey::from_pem(pem)
                .ok()
                .map(SigningKey::EdDsa),
            _ => return Err("alg is not supported; use ES256, RS256 or EdDSA".to_string()),
        };
        key.ok_or_else(|| format!("is not a PEM {alg} private key (RSA keys need ≥ 2048 bits)"))
    }

    fn alg(&self) -> &'static str {
        match *self {
            #[cfg(feature = "private-key-jwt")]
            SigningKey::Es256(_) => "ES256",
            #[cfg(feature = "private-key-jwt")]
            SigningKey::Rs256(_) => "RS256",
            #[cfg(feature = "private-key-jwt")]
            SigningKey::EdDsa(_) => "EdDSA",
        }
    }

    #[cfg_attr(not(feature = "private-key-jwt"), allow(unused_variables))]
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match *self {
            #[cfg(feature = "private-key-jwt")]
            SigningKey::Es256(ref k) => Es256.sign(k, message).as_bytes().to_vec(),
            #[cfg(feature = "private-key-jwt")]
            SigningKey::Rs256(ref k) => Rsa::rs256().sign(k, message).as_bytes().to_vec(),
            #[cfg(feature = "private-key-jwt")]
            SigningKey::EdDsa(ref k) => Ed25519.sign(k, message).as_bytes().to_vec(),
        }
    }
}

/// The filter's `private_key_jwt` identity: who it is, for which audience, with which key.
#[derive(Clone)]
pub struct AssertionSigner {
    /// `iss` and `sub` of every assertion: the client id.
    pub client_id: String,
    /// `aud`: the authorization server (by default its token endpoint URL).
    pub audience: String,
    /// `kid` header, if configured.
    pub kid: Option<String>,
    /// The private key.
    pub key: SigningKey,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AssertionSigner({} {} aud={})",
            self.client_id,
            self.key.alg(),
            self.audience
        )
    }
}

impl PartialEq for AssertionSigner {
    fn eq(&self, other: &Self) -> bool {
        self.client_id == other.client_id
            && self.audience == other.audience
            && self.kid == other.kid
    }
}

impl Eq for AssertionSigner {}

impl AssertionSigner {
    /// A fresh client assertion valid for [`LIFETIME_S`] from `now_s`, with a random `jti`.
    /// Fails only when the host has no randomness to give.
    pub fn assertion(&self, now_s: u64) -> Result<String, getrandom::Error> {
        let mut jti = [0u8; 16];
        getrandom::getrandom(&mut jti)?;
        let mut header = serde_json::json!({ "alg": self.key.alg(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = kid.as_str().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "iat": now_s,
            "exp": now_s + LIFETIME_S,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(input.as_bytes());
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jwt_compact::{AlgorithmExt, UntrustedToken};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    /// A PEM ES256 key and its public half.
    pub fn es256_pem() -> (String, p256::ecdsa::VerifyingKey) {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        (pem, *key.verifying_key())
    }

    /// A PKCS#8 PEM of an Ed25519 key.
    pub fn ed25519_pem(sk: &ed25519_compact::SecretKey) -> String {
        // PKCS#8 v1 for Ed25519: a fixed prefix, then the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&sk.seed()[..]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    fn claims_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn es256_assertion_has_the_rfc7523_claims_and_verifies() {
        let (pem, public) = es256_pem();
        let signer = AssertionSigner {
            client_id: "edge".into(),
            audience: "https://sts.local/token".into(),
            kid: Some("k1".into()),
            key: SigningKey::from_pem("ES256", &pem).unwrap(),
        };
        let a = signer.assertion(1_000).unwrap();
        let untrusted = UntrustedToken::new(&a).unwrap();
        assert_eq!(untrusted.header().key_id.as_deref(), Some("k1"));
        Es256
            .validator::<serde_json::Value>(&public)
            .validate(&untrusted)
            .unwrap();
        let c = claims_of(&a);
        assert_eq!(c["iss"], "edge");
        assert_eq!(c["sub"], "edge");
        assert_eq!(c["aud"], "https://sts.local/token");
        assert_eq!(c["iat"], 1_000);
        assert_eq!(c["exp"], 1_060);
        let b = signer.assertion(1_000).unwrap();
        assert_ne!(claims_of(&b)["jti"], c["jti"], "a fresh jti per assertion");
    }

    #[test]
    fn rs256_and_eddsa_assertions_verify() {
        use jwt_compact::alg::{ModulusBits, StrongKey};
        let (rsa, _) = Rsa::generate(&mut rand_core::OsRng, ModulusBits::TwoKibibytes).unwrap();
        let rsa: rsa::RsaPrivateKey = rsa.into_inner();
        let pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&rsa, LineEnding::LF)
            .unwrap()
            .to_string();
        let signer = AssertionSigner {
            client_id: "c".into(),
            audience: "a".into(),
            kid: None,
            key: SigningKey::from_pem("RS256", &pem).unwrap(),
        };
        let a = signer.assertion(5).unwrap();
        let public = StrongKey::try_from(rsa.to_public_key())
            .unwrap()
            .into_inner();
        Rsa::rs256()
            .validator::<serde_json::Value>(&public)
            .validate(&UntrustedToken::new(&a).unwrap())
            .unwrap();

        let pair = ed25519_compact::KeyPair::generate();
        let signer = AssertionSigner {
            client_id: "c".into(),
            audience: "a".into(),
            kid: None,
            key: SigningKey::from_pem("EdDSA", &ed25519_pem(&pair.sk)).unwrap(),
        };
        let a = signer.assertion(5).unwrap();
        Ed25519
            .validator::<serde_json::Value>(&pair.pk)
            .validate(&UntrustedToken::new(&a).unwrap())
            .unwrap();
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let (pem, _) = es256_pem();
        let e = SigningKey::from_pem("RS256", &pem).err().unwrap();
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        assert!(SigningKey::from_pem("ES256", "garbage").is_err());
        assert!(SigningKey::from_pem("HS256", &pem).is_err());
    }
}
