use serde_json::{json, Value};

use super::*;
use crate::dpop::tests_support::{jkt, proof};
use crate::jwks::tests::TestKeys;

const NOW: u64 = 1_800_000_000;

/// A change to a proof's header and claims before it is signed.
type Edit = Box<dyn FnOnce(&mut Value, &mut Value)>;
const TOKEN: &str = "eyJ.bound.token";

fn rules() -> DpopConfig {
    DpopConfig {
        required: false,
        algorithms: vec![JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::Ps256, JwsAlg::EdDsa],
        max_age_s: 60,
        clock_skew_s: 5,
        origins: vec!["https://api.example".into()],
        replay_entries: 1024,
    }
}

fn target() -> Target<'static> {
    Target {
        method: "GET",
        scheme: "http",
        authority: "127.0.0.1:10000",
        path: "/orders/42?page=1",
        token: TOKEN,
    }
}

const HTU: &str = "http://127.0.0.1:10000/orders/42";

fn check(p: &str) -> Result<Proven, ProofError> {
    verify(p, &target(), &rules(), NOW)
}

fn edited(keys: &TestKeys, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    proof(keys, "ES256", ("GET", HTU), (NOW, TOKEN), edit)
}

#[test]
fn a_good_proof_of_each_algorithm_names_its_key() {
    let keys = TestKeys::new();
    for alg in ["ES256", "RS256", "PS256", "EdDSA"] {
        let p = proof(&keys, alg, ("GET", HTU), (NOW, TOKEN), |_, _| {});
        let proven = check(&p).unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(proven.jkt, jkt(&keys, alg), "{alg}");
        assert_eq!(proven.iat, NOW);
    }
}

#[test]
fn the_thumbprint_is_rfc_7638s() {
    // RFC 7638 §3.1.
    let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
    let jwk = JsonWebKey::deserialize(&jwk).unwrap();
    assert_eq!(
        proof_thumbprint(&jwk),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn the_header_is_held_to_the_rfc() {
    let keys = TestKeys::new();
    let cases: Vec<(&str, Edit, ProofError)> = vec![
        (
            "typ JWT",
            Box::new(|h, _| h["typ"] = "JWT".into()),
            ProofError::Type,
        ),
        (
            "no typ",
            Box::new(|h, _| drop(h.as_object_mut().unwrap().remove("typ"))),
            ProofError::Type,
        ),
        (
            "no jwk",
            Box::new(|h, _| drop(h.as_object_mut().unwrap().remove("jwk"))),
            ProofError::Key,
        ),
        (
            "private d",
            Box::new(|h, _| h["jwk"]["d"] = "AAAA".into()),
            ProofError::Key,
        ),
        (
            "symmetric jwk",
            Box::new(|h, _| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
            ProofError::Key,
        ),
        (
            "crit",
            Box::new(|h, _| h["crit"] = json!(["x"])),
            ProofError::Malformed,
        ),
    ];
    for (name, edit, want) in cases {
        assert_eq!(check(&edited(&keys, edit)).unwrap_err(), want, "{name}");
    }
    // The media type in any case, with or without application/.
    for typ in ["DPoP+JWT", "application/dpop+jwt"] {
        assert!(
            check(&edited(&keys, |h, _| h["typ"] = typ.into())).is_ok(),
            "{typ}"
        );
    }
}

#[test]
fn none_a_mac_an_unlisted_algorithm_or_another_key_are_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let keys = TestKeys::new();
    let good = edited(&keys, |_, _| {});
    let (head, rest) = good.split_once('.').unwrap();
    let payload = rest.split_once('.').unwrap().0;
    let mut h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap();
    for alg in ["none", "HS256"] {
        h["alg"] = alg.into();
        let head = URL_SAFE_NO_PAD.encode(h.to_string());
        for sig in ["", "c2ln"] {
            let forged = format!("{head}.{payload}.{sig}");
            assert!(check(&forged).is_err(), "{alg} {sig:?}");
        }
    }
    let mut only_rsa = rules();
    only_rsa.algorithms = vec![JwsAlg::Rs256];
    assert_eq!(
        verify(&good, &target(), &only_rsa, NOW).unwrap_err(),
        ProofError::Algorithm
    );
    // Signed by another key than the header's.
    let other = TestKeys::new();
    let forged = proof(&other, "ES256", ("GET", HTU), (NOW, TOKEN), |h, _| {
        h["jwk"] = crate::dpop::tests_support::public_jwk(&keys, "ES256");
    });
    assert_eq!(check(&forged).unwrap_err(), ProofError::Signature);
    // A tampered payload.
    let (signing, sig) = good.rsplit_once('.').unwrap();
    let tampered = format!("{}A.{sig}", signing);
    assert!(check(&tampered).is_err());
    assert_eq!(
        check(&"a".repeat(MAX_PROOF_BYTES + 1)).unwrap_err(),
        ProofError::Malformed
    );
    assert_eq!(check("not a jws").unwrap_err(), ProofError::Malformed);
}

#[test]
fn the_claims_must_name_this_request_this_moment_and_this_token() {
    let keys = TestKeys::new();
    let refused = |edit: Edit| check(&edited(&keys, edit)).unwrap_err();
    assert_eq!(
        refused(Box::new(|_, c| c["htm"] = "POST".into())),
        ProofError::Method
    );
    assert_eq!(
        refused(Box::new(|_, c| c["htm"] = "get".into())),
        ProofError::Method
    );
    for htu in [
        "http://127.0.0.1:10000/orders/43",
        "http://127.0.0.1:10001/orders/42",
        "https://127.0.0.1:10000/orders/42",
        "http://localhost:10000/orders/42",
        "http://user@127.0.0.1:10000/orders/42",
        "/orders/42",
        "ftp://127.0.0.1:10000/orders/42",
    ] {
        assert_eq!(
            refused(Box::new(move |_, c| c["htu"] = htu.into())),
            ProofError::Uri,
            "{htu}"
        );
    }
    assert_eq!(
        refused(Box::new(|_, c| c["iat"] = (NOW - 66).into())),
        ProofError::Time
    );
    assert_eq!(
        refused(Box::new(|_, c| c["iat"] = (NOW + 6).into())),
        ProofError::Time
    );
    assert_eq!(
        refused(Box::new(|_, c| drop(
            c.as_object_mut().unwrap().remove("iat")
        ))),
        ProofError::Time
    );
    assert_eq!(
        refused(Box::new(|_, c| c["ath"] = token_hash("another").into())),
        ProofError::TokenHash
    );
    assert_eq!(
        refused(Box::new(|_, c| drop(
            c.as_object_mut().unwrap().remove("ath")
        ))),
        ProofError::TokenHash
    );
    assert_eq!(
        refused(Box::new(|_, c| drop(
            c.as_object_mut().unwrap().remove("jti")
        ))),
        ProofError::Jti
    );
    assert_eq!(
        refused(Box::new(|_, c| c["jti"] = "".into())),
        ProofError::Jti
    );
    // The edges of the window hold.
    for iat in [NOW - 65, NOW + 5] {
        assert!(
            check(&edited(&keys, move |_, c| c["iat"] = iat.into())).is_ok(),
            "{iat}"
        );
    }
}

#[test]
fn htu_is_compared_after_normalization_query_and_fragment_ignored() {
    let keys = TestKeys::new();
    for htu in [
        "HTTP://127.0.0.1:10000/orders/42",
        "http://127.0.0.1:10000/orders/42?other=1",
        "http://127.0.0.1:10000/orders/42#frag",
        "http://127.0.0.1:10000/%6Frders/42",
        "http://127.0.0.1:10000/orders/./42",
        "https://API.example:443/orders/42",
        "https://api.example/orders/42",
    ] {
        let p = edited(&keys, move |_, c| c["htu"] = htu.into());
        assert!(check(&p).is_ok(), "{htu}");
    }
    // The default port of the request's own origin.
    let t = Target {
        scheme: "https",
        authority: "Orders.Example:443",
        ..target()
    };
    let p = proof(
        &keys,
        "ES256",
        ("GET", "https://orders.example/orders/42"),
        (NOW, TOKEN),
        |_, _| {},
    );
    assert!(verify(&p, &t, &rules(), NOW).is_ok());
    // Percent-encoding case: %2f and %2F are one character, never the slash itself.
    let t = Target {
        path: "/a%2Fb",
        ..target()
    };
    let p = proof(
        &keys,
        "ES256",
        ("GET", "http://127.0.0.1:10000/a%2fb"),
        (NOW, TOKEN),
        |_, _| {},
    );
    assert!(verify(&p, &t, &rules(), NOW).is_ok());
    let p = proof(
        &keys,
        "ES256",
        ("GET", "http://127.0.0.1:10000/a/b"),
        (NOW, TOKEN),
        |_, _| {},
    );
    assert_eq!(verify(&p, &t, &rules(), NOW).unwrap_err(), ProofError::Uri);
}
