//! JSON Web Key Sets: parsing (keys of unsupported types are skipped, the rest kept), key lookup
//! by `kid`, and the refresh schedule of a remote set.

use std::fmt;

use crate::config::JwsAlg;

#[cfg(feature = "trusted-issuers")]
use std::str::FromStr;

#[cfg(feature = "trusted-issuers")]
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey, StrongKey};
use jwt_compact::jwk::JsonWebKey;
#[cfg(feature = "trusted-issuers")]
use jwt_compact::AlgorithmExt;
use jwt_compact::{Token, UntrustedToken, ValidationError};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A public key usable for verification (none in a build without the `trusted-issuers`
/// feature).
#[derive(Clone)]
pub enum PublicKey {
    /// RSA, at least 2048 bits.
    #[cfg(feature = "trusted-issuers")]
    Rsa(RsaPublicKey),
    /// EC P-256.
    #[cfg(feature = "trusted-issuers")]
    P256(p256::ecdsa::VerifyingKey),
    /// OKP Ed25519.
    #[cfg(feature = "trusted-issuers")]
    Ed25519(ed25519_compact::PublicKey),
}

impl PublicKey {
    /// Whether this key type goes with `alg` (RSA for RS*/PS*, P-256 for ES256, Ed25519 for EdDSA).
    #[cfg_attr(not(feature = "trusted-issuers"), allow(unused_variables))]
    pub fn fits(&self, alg: JwsAlg) -> bool {
        match *self {
            #[cfg(feature = "trusted-issuers")]
            PublicKey::Rsa(_) => matches!(
                alg,
                JwsAlg::Rs256
                    | JwsAlg::Rs384
                    | JwsAlg::Rs512
                    | JwsAlg::Ps256
                    | JwsAlg::Ps384
                    | JwsAlg::Ps512
            ),
            #[cfg(feature = "trusted-issuers")]
            PublicKey::P256(_) => alg == JwsAlg::Es256,
            #[cfg(feature = "trusted-issuers")]
            PublicKey::Ed25519(_) => alg == JwsAlg::EdDsa,
        }
    }

    /// Checks the signature of `token` for `alg` with this key and reads its claims (their
    /// time claims' format too); `None` when the key does not serve that algorithm.
    #[cfg_attr(not(feature = "trusted-issuers"), allow(unused_variables))]
    pub fn validate<T: DeserializeOwned, H: Clone>(
        &self,
        alg: JwsAlg,
        token: &UntrustedToken<'_, H>,
    ) -> Option<Result<Token<T, H>, ValidationError>> {
        match *self {
            #[cfg(feature = "trusted-issuers")]
            PublicKey::Rsa(ref k) => {
                let rsa = Rsa::from_str(alg.name()).ok()?;
                Some(rsa.validator::<T>(k).validate(token))
            }
            #[cfg(feature = "trusted-issuers")]
            PublicKey::P256(ref k) => {
                (alg == JwsAlg::Es256).then(|| Es256.validator::<T>(k).validate(token))
            }
            #[cfg(feature = "trusted-issuers")]
            PublicKey::Ed25519(ref k) => {
                (alg == JwsAlg::EdDsa).then(|| Ed25519.validator::<T>(k).validate(token))
            }
        }
    }

    /// The verification key a public JWK holds, if it is of a type this build verifies.
    #[cfg(feature = "trusted-issuers")]
    pub fn from_jwk(jwk: &JsonWebKey<'_>) -> Option<PublicKey> {
        Some(match jwk {
            JsonWebKey::Rsa {
                private_parts: None,
                ..
            } => {
                let key = RsaPublicKey::try_from(jwk).ok()?;
                PublicKey::Rsa(StrongKey::try_from(key).ok()?.into_inner())
            }
            JsonWebKey::EllipticCurve { secret: None, .. } => {
                PublicKey::P256(p256::ecdsa::VerifyingKey::try_from(jwk).ok()?)
            }
            JsonWebKey::KeyPair { secret: None, .. } => {
                PublicKey::Ed25519(ed25519_compact::PublicKey::try_from(jwk).ok()?)
            }
            _ => return None,
        })
    }

    /// The verification key a public JWK holds: none, in a build that verifies no JWT.
    #[cfg(not(feature = "trusted-issuers"))]
    pub fn from_jwk(_: &JsonWebKey<'_>) -> Option<PublicKey> {
        None
    }
}

/// One key of a set.
#[derive(Clone)]
pub struct Key {
    /// `kid`, if the set named it.
    pub kid: Option<String>,
    /// The JWK's own `alg`, if given: a token must then use exactly that algorithm.
    pub alg: Option<String>,
    /// The key.
    pub public: PublicKey,
}

/// The usable keys of a JWKS.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Keys in the order the set listed them.
    pub keys: Vec<Key>,
    /// How many listed keys were skipped (unsupported type, encryption use, weak, malformed).
    pub skipped: usize,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        write!(f, "KeySet(kids={kids:?}, skipped={})", self.skipped)
    }
}

/// Why a JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    NotAKeySet,
    /// No key in the set can be used.
    NoUsableKey,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotAKeySet => {
                f.write_str("not a JWKS (a JSON object with a \"keys\" array)")
            }
            JwksError::NoUsableKey => {
                f.write_str("no usable key (RSA ≥ 2048 bits, EC P-256, OKP Ed25519)")
            }
        }
    }
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// What a key lookup found.
pub enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a Key),
    /// No key with that `kid` (or, without a `kid`, none of the right type): maybe a rotation.
    Unknown,
    /// No `kid` and several keys of the right type: the token is refused.
    Ambiguous,
}

impl KeySet {
    /// Parses a JWKS; keys that cannot be used are skipped and counted.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawSet = serde_json::from_slice(json).map_err(|_| JwksError::NotAKeySet)?;
        Self::from_values(raw.keys)
    }

    /// Parses a JWKS given as a JSON value.
    pub fn from_value(value: &serde_json::Value) -> Result<KeySet, JwksError> {
        let raw = RawSet::deserialize(value).map_err(|_| JwksError::NotAKeySet)?;
        Self::from_values(raw.keys)
    }

    fn from_values(values: Vec<serde_json::Value>) -> Result<KeySet, JwksError> {
        let mut set = KeySet::default();
        for v in values {
            // Past MAX_KEYS, keys are not even parsed: a hostile set costs bounded work.
            match (set.keys.len() < MAX_KEYS).then(|| parse_key(&v)).flatten() {
                Some(k) => set.keys.push(k),
                None => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    /// The key a token with `kid` and `alg` should be verified with.
    pub fn find(&self, kid: Option<&str>, alg: JwsAlg) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                // RFC 7517 §4.5 lets keys of different types share a `kid`: take the one that
                // fits the token's algorithm, else the first (which then fails the alg check).
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let first = named.clone().next();
                named
                    .find(|k| {
                        k.public.fits(alg) && k.alg.as_deref().is_none_or(|a| a == alg.name())
                    })
                    .or(first)
                    .map_or(Lookup::Unknown, Lookup::Found)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.public.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k),
                    (None, _) => Lookup::Unknown,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }
}

fn parse_key(v: &serde_json::Value) -> Option<Key> {
    let text = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_string);
    if text("use").is_some_and(|u| u != "sig") {
        return None;
    }
    // RFC 7517 §4.3: a key whose `key_ops` are given but lack "verify" must not verify.
    if let Some(ops) = v.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return None;
        }
    }
    let public = PublicKey::from_jwk(&JsonWebKey::deserialize(v).ok()?)?;
    Some(Key {
        kid: text("kid"),
        alg: text("alg"),
        public,
    })
}

/// When a remote key set is fetched: at start, every `refresh_s`, early when a token names an
/// unknown `kid` (at most once per [`MIN_REFETCH_MS`]), and every [`RETRY_MS`] while no keys
/// have arrived yet or after a failed fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Regular refresh period, ms.
    pub refresh_ms: u64,
}

/// The most keys read from one set; the rest are skipped unparsed.
pub const MAX_KEYS: usize = 100;

/// The least time between two fetches of one issuer's keys once it has keys.
pub const MIN_REFETCH_MS: u64 = 10_000;
/// The retry period while an issuer has no keys, and the first backoff after a failed fetch.
pub const RETRY_MS: u64 = 1_000;

/// How long to wait after `failures` failed fetches in a row: from 1 s, doubling, up to
/// `cap_ms`, less a jitter of up to a quarter taken from `seed` (the failed attempt's time, so
/// proxies whose IdP went down together do not retry together), never under 1 s.
pub fn backoff_ms(failures: u32, cap_ms: u64, seed: u64) -> u64 {
    let doubled = RETRY_MS.saturating_mul(1u64 << failures.saturating_sub(1).min(30));
    let base = doubled.min(cap_ms.max(RETRY_MS));
    let jitter = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (base / 4 + 1);
    base.saturating_sub(jitter).max(RETRY_MS)
}

impl Schedule {
    /// Whether a fetch is due now. `fetched_at` is when the keys in use were fetched (`None`: no
    /// keys yet); `last_attempt` is when the last fetch by any worker started; `failures` counts
    /// the failed fetches in a row before it (0: it did not fail), which back off exponentially
    /// with jitter up to the refresh period; `unknown_kid` says a token named a key not in the set.
    pub fn due(
        &self,
        now: u64,
        fetched_at: Option<u64>,
        last_attempt: Option<u64>,
        failures: u32,
        unknown_kid: bool,
    ) -> bool {
        // A time stamp that lies in the future (the wall clock stepped back) counts as long ago:
        // otherwise nothing would be fetched until the clock caught up again.
        let since = |t: u64| if t > now { u64::MAX } else { now - t };
        let since_attempt = last_attempt.map_or(u64::MAX, since);
        let backoff = backoff_ms(failures, self.refresh_ms, last_attempt.unwrap_or(0));
        match fetched_at {
            None if failures > 0 => since_attempt >= backoff,
            None => since_attempt >= RETRY_MS,
            Some(_) if failures > 0 => {
                since_attempt >= backoff.max(MIN_REFETCH_MS.min(self.refresh_ms))
            }
            Some(at) => {
                let stale = since(at) >= self.refresh_ms;
                (stale || unknown_kid) && since_attempt >= MIN_REFETCH_MS
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jwt_compact::alg::{ModulusBits, Rsa};
    use rand_core::OsRng;

    /// Test keys: an RSA, a P-256 and an Ed25519 pair, each with its public JWK.
    pub struct TestKeys {
        pub rsa: jwt_compact::alg::RsaPrivateKey,
        pub ec: p256::ecdsa::SigningKey,
        pub ed: ed25519_compact::SecretKey,
    }

    impl TestKeys {
        pub fn new() -> Self {
            let (rsa, _) = Rsa::generate(&mut OsRng, ModulusBits::TwoKibibytes).unwrap();
            let rsa = rsa.into_inner();
            let ec = p256::ecdsa::SigningKey::random(&mut OsRng);
            let ed = ed25519_compact::KeyPair::generate().sk;
            TestKeys { rsa, ec, ed }
        }

        pub fn rsa_jwk(&self, kid: &str) -> serde_json::Value {
            with_kid(&JsonWebKey::from(&self.rsa.to_public_key()), kid)
        }
        pub fn ec_jwk(&self, kid: &str) -> serde_json::Value {
            with_kid(&JsonWebKey::from(self.ec.verifying_key()), kid)
        }
        pub fn ed_jwk(&self, kid: &str) -> serde_json::Value {
            with_kid(&JsonWebKey::from(&self.ed.public_key()), kid)
        }

        /// A JWKS with the three public keys as `rsa`, `ec` and `ed`.
        pub fn jwks(&self) -> serde_json::Value {
            serde_json::json!({ "keys": [self.rsa_jwk("rsa"), self.ec_jwk("ec"), self.ed_jwk("ed")] })
        }

        /// A compact JWS over `header` and `claims`, signed with the key that fits `alg`.
        pub fn sign_with_header(
            &self,
            header: &serde_json::Value,
            claims: &serde_json::Value,
        ) -> String {
            use base64::engine::general_purpose::URL_SAFE_NO_PAD;
            use base64::Engine as _;
            use jwt_compact::{Algorithm, AlgorithmSignature};
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let msg = signing_input.as_bytes();
            let sig: Vec<u8> = match header["alg"].as_str().unwrap_or("") {
                "ES256" => jwt_compact::alg::Es256
                    .sign(&self.ec, msg)
                    .as_bytes()
                    .to_vec(),
                "EdDSA" => jwt_compact::alg::Ed25519
                    .sign(&self.ed, msg)
                    .as_bytes()
                    .to_vec(),
                name => name
                    .parse::<Rsa>()
                    .unwrap()
                    .sign(&self.rsa, msg)
                    .as_bytes()
                    .to_vec(),
            };
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        /// A JWT signed with `alg` under `kid`.
        pub fn sign(&self, alg: &str, kid: Option<&str>, claims: &serde_json::Value) -> String {
            let mut header = serde_json::json!({ "alg": alg, "typ": "JWT" });
            if let Some(kid) = kid {
                header["kid"] = kid.into();
            }
            self.sign_with_header(&header, claims)
        }
    }

    fn with_kid(jwk: &JsonWebKey<'_>, kid: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = kid.into();
        v
    }

    #[test]
    fn a_huge_set_costs_bounded_work() {
        let k = TestKeys::new();
        let mut keys: Vec<serde_json::Value> =
            (0..5000).map(|i| k.ec_jwk(&format!("e{i}"))).collect();
        keys.push(k.ed_jwk("last"));
        let body = serde_json::json!({ "keys": keys }).to_string();
        let set = KeySet::parse(body.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), MAX_KEYS);
        assert_eq!(set.skipped, 5001 - MAX_KEYS);
        assert!(matches!(
            set.find(Some("last"), JwsAlg::EdDsa),
            Lookup::Unknown
        ));
    }

    #[test]
    fn a_clock_that_steps_back_does_not_stop_refresh() {
        let s = Schedule { refresh_ms: 60_000 };
        let fetched = 10_000_000;
        let an_hour_earlier = fetched - 3_600_000;
        // Keys and the last attempt appear to come from the future: due, not frozen.
        assert!(s.due(an_hour_earlier, Some(fetched), Some(fetched), 0, false));
        assert!(s.due(an_hour_earlier, Some(fetched), Some(fetched), 0, true));
        assert!(s.due(an_hour_earlier, None, Some(fetched), 0, false));
        // A normal clock is still rate-limited.
        assert!(!s.due(fetched + 1_000, Some(fetched), Some(fetched), 0, true));
    }

    #[test]
    fn unsupported_keys_are_skipped_and_good_ones_kept() {
        let k = TestKeys::new();
        let set = serde_json::json!({ "keys": [
            { "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" },
            { "kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "p384" },
            { "kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa" },
            { "kty": "weird", "kid": "w" },
            k.rsa_jwk("r1"),
            k.ec_jwk("e1"),
            k.ed_jwk("d1"),
            { "use": "enc", "kid": "enc", "kty": "RSA", "n": "AQAB", "e": "AQAB" },
        ]});
        let parsed = KeySet::parse(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = parsed.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, vec!["r1", "e1", "d1"]);
        assert_eq!(parsed.skipped, 5);
        assert!(matches!(
            parsed.find(Some("e1"), JwsAlg::Es256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            parsed.find(Some("nope"), JwsAlg::Es256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn a_set_without_usable_keys_or_not_a_set_is_refused() {
        assert_eq!(KeySet::parse(b"[]").unwrap_err(), JwksError::NotAKeySet);
        assert_eq!(
            KeySet::parse(b"{\"keys\":{}}").unwrap_err(),
            JwksError::NotAKeySet
        );
        assert_eq!(
            KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err(),
            JwksError::NoUsableKey
        );
    }

    #[test]
    fn private_keys_are_not_accepted_as_verification_keys() {
        let k = TestKeys::new();
        let private = serde_json::to_value(JsonWebKey::from(&k.ec)).unwrap();
        let set = serde_json::json!({ "keys": [private] });
        assert_eq!(
            KeySet::from_value(&set).unwrap_err(),
            JwksError::NoUsableKey
        );
    }

    #[test]
    fn without_kid_only_a_single_fitting_key_is_used() {
        let k = TestKeys::new();
        let one =
            KeySet::from_value(&serde_json::json!({ "keys": [k.rsa_jwk("r"), k.ec_jwk("e")] }))
                .unwrap();
        assert!(
            matches!(one.find(None, JwsAlg::Es256), Lookup::Found(key) if key.kid.as_deref() == Some("e"))
        );
        assert!(matches!(one.find(None, JwsAlg::EdDsa), Lookup::Unknown));
        let two =
            KeySet::from_value(&serde_json::json!({ "keys": [k.ec_jwk("a"), k.ec_jwk("b")] }))
                .unwrap();
        assert!(matches!(two.find(None, JwsAlg::Es256), Lookup::Ambiguous));
    }

    #[test]
    fn key_types_fit_only_their_algorithms() {
        let k = TestKeys::new();
        let set = KeySet::from_value(
            &serde_json::json!({ "keys": [k.rsa_jwk("r"), k.ec_jwk("e"), k.ed_jwk("d")] }),
        )
        .unwrap();
        let rsa = &set.keys[0].public;
        assert!(rsa.fits(JwsAlg::Rs256) && rsa.fits(JwsAlg::Ps512) && !rsa.fits(JwsAlg::Es256));
        assert!(set.keys[1].public.fits(JwsAlg::Es256) && !set.keys[1].public.fits(JwsAlg::EdDsa));
        assert!(set.keys[2].public.fits(JwsAlg::EdDsa) && !set.keys[2].public.fits(JwsAlg::Rs256));
    }

    #[test]
    fn schedule_fetches_at_start_on_refresh_and_early_at_most_every_ten_seconds() {
        let s = Schedule {
            refresh_ms: 300_000,
        };
        let t = 1_000_000;
        // no keys: now, and every second while failing
        assert!(s.due(t, None, None, 0, false));
        assert!(!s.due(t, None, Some(t - 999), 1, false));
        assert!(s.due(t, None, Some(t - 1000), 1, false));
        // keys: not before refresh_s ...
        assert!(!s.due(t, Some(t - 299_999), Some(t - 299_999), 0, false));
        assert!(s.due(t, Some(t - 300_000), Some(t - 300_000), 0, false));
        // ... except for an unknown kid, rate-limited to one fetch per 10 s
        assert!(!s.due(t, Some(t - 5_000), Some(t - 5_000), 0, true));
        assert!(s.due(t, Some(t - 10_000), Some(t - 10_000), 0, true));
        // a failed refresh keeps the keys and retries after 10 s, sooner than refresh_s
        assert!(!s.due(t, Some(t - 400_000), Some(t - 9_000), 1, false));
        assert!(s.due(t, Some(t - 400_000), Some(t - 10_000), 1, false));
    }

    #[test]
    fn failed_fetches_back_off_from_a_second_to_the_refresh_period_with_jitter() {
        assert_eq!(
            backoff_ms(1, 300_000, 12_345),
            1_000,
            "the first retry after a second"
        );
        let mut last = 0;
        for failures in 1..40 {
            let waits: Vec<u64> = (0..50u64)
                .map(|seed| backoff_ms(failures, 300_000, seed * 7_919))
                .collect();
            let most = *waits.iter().max().unwrap();
            assert!(
                waits.iter().all(|w| (1_000..=300_000).contains(w)),
                "{failures}: {waits:?}"
            );
            assert!(most >= last, "never shorter as failures grow");
            last = most;
        }
        assert_eq!(last, 300_000, "capped at the refresh period");
        // Jitter spreads proxies that failed together: the waits differ by seed.
        let spread: std::collections::BTreeSet<u64> = (0..50u64)
            .map(|seed| backoff_ms(6, 300_000, seed * 7_919))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
        assert!(
            spread.iter().all(|w| (24_000..=32_000).contains(w)),
            "{spread:?}"
        );
        // A refresh period under a second still waits a second.
        assert_eq!(backoff_ms(5, 10, 0), 1_000);
        let s = Schedule {
            refresh_ms: 300_000,
        };
        let t = 1_700_000_000_000u64;
        assert!(
            s.due(t, None, Some(t - 2_000), 2, false),
            "two failures: at most two seconds"
        );
        assert!(
            !s.due(t, None, Some(t - 999), 5, false),
            "never more than once a second"
        );
    }
}
