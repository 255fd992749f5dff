//! Tests of reading, verifying and naming tokens.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

const P: &str = "Bearer ";

#[test]
fn bearer_scheme_is_matched_case_insensitively() {
    for v in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr   abc  "] {
        assert_eq!(extract(Some(v), P, 100), Extracted::Token("abc"), "{v}");
    }
}

#[test]
fn other_schemes_and_absent_headers_count_as_missing() {
    assert_eq!(extract(None, P, 100), Extracted::Missing);
    assert_eq!(
        extract(Some("Basic dXNlcjpwdw=="), P, 100),
        Extracted::Missing
    );
    assert_eq!(extract(Some("Bearerabc"), P, 100), Extracted::Missing);
    assert_eq!(extract(Some(""), P, 100), Extracted::Missing);
}

#[test]
fn a_bearer_credential_gone_wrong_is_malformed_not_missing() {
    for v in [
        "Bearer\tabc",
        "bearer\u{b}abc",
        "Bearer,abc",
        "Bearer\u{0}abc",
        "BEARER\t\tabc",
    ] {
        assert!(
            matches!(extract(Some(v), P, 100), Extracted::Malformed(_)),
            "{v:?}"
        );
    }
    // Surrounding white space is not part of the value.
    assert_eq!(
        extract(Some("  Bearer abc \t"), P, 100),
        Extracted::Token("abc")
    );
    assert_eq!(
        extract(Some("\tbearer abc"), P, 100),
        Extracted::Token("abc")
    );
    // Another scheme, even one that starts like ours, is not ours.
    assert_eq!(extract(Some("BearerX abc"), P, 100), Extracted::Missing);
    assert_eq!(extract(Some("Basic abc"), P, 100), Extracted::Missing);
}

#[test]
fn scheme_without_token_is_malformed() {
    assert!(matches!(
        extract(Some("Bearer"), P, 100),
        Extracted::Malformed(_)
    ));
    assert!(matches!(
        extract(Some("Bearer    "), P, 100),
        Extracted::Malformed(_)
    ));
    assert!(matches!(
        extract(Some("x-token"), "", 100),
        Extracted::Token("x-token")
    ));
    assert!(matches!(
        extract(Some("  "), "", 100),
        Extracted::Malformed(_)
    ));
}

#[test]
fn size_limit_is_inclusive() {
    let at = "a".repeat(16);
    let over = "a".repeat(17);
    assert_eq!(
        extract(Some(&format!("Bearer {at}")), P, 16),
        Extracted::Token(&at)
    );
    assert_eq!(
        extract(Some(&format!("Bearer {over}")), P, 16),
        Extracted::Malformed("token too large")
    );
}

#[test]
fn only_b64token_characters_are_accepted() {
    assert_eq!(
        extract(Some("Bearer a.b-c_d~e+f/g=="), P, 100),
        Extracted::Token("a.b-c_d~e+f/g==")
    );
    for bad in [
        "Bearer a b",
        "Bearer a\"b",
        "Bearer é",
        "Bearer a=b",
        "Bearer ==",
        "Bearer a,b",
    ] {
        assert!(
            matches!(extract(Some(bad), P, 100), Extracted::Malformed(_)),
            "{bad}"
        );
    }
}

#[test]
fn multibyte_values_never_split_a_char() {
    assert_eq!(extract(Some("Beéé"), P, 100), Extracted::Missing);
    assert_eq!(extract(Some("é"), P, 100), Extracted::Missing);
}

fn jwt(claims: &str) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    format!("{h}.{c}.sig")
}

#[test]
fn exp_is_read_from_jwts_only() {
    assert_eq!(
        unverified_exp(&jwt(r#"{"exp":1700000000,"sub":"u"}"#)),
        Some(1_700_000_000)
    );
    assert_eq!(unverified_exp(&jwt(r#"{"sub":"u"}"#)), None);
    assert_eq!(unverified_exp(&jwt(r#"{"exp":"soon"}"#)), None);
    assert_eq!(unverified_exp("opaque-token"), None);
    assert_eq!(unverified_exp("a.b.c"), None);
}

mod jwt {
    use super::super::*;
    use crate::config::{JwsAlg, KeySource, TrustedIssuer};
    use crate::jwks::tests::TestKeys;
    use crate::jwks::KeySet;
    use crate::jwt_error::JwtError;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://idp.example";

    fn keys() -> &'static TestKeys {
        static KEYS: OnceLock<TestKeys> = OnceLock::new();
        KEYS.get_or_init(TestKeys::new)
    }

    fn issuer(audiences: &[&str]) -> TrustedIssuer {
        TrustedIssuer {
            issuer: ISS.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            algorithms: vec![JwsAlg::Rs256, JwsAlg::Es256, JwsAlg::EdDsa],
            leeway_s: 30,
            keys: KeySource::Inline(keys().jwks()),
            forward: false,
            introspection: None,
            enforce_binding: true,
        }
    }

    fn check_with(token: &str, iss: &TrustedIssuer) -> JwtCheck {
        let KeySource::Inline(doc) = &iss.keys else {
            unreachable!()
        };
        let set = KeySet::from_value(doc).unwrap();
        verify_jwt(token, std::slice::from_ref(iss), |_| Some(&set), NOW)
    }

    fn check(token: &str) -> JwtCheck {
        check_with(token, &issuer(&[]))
    }

    fn claims() -> serde_json::Value {
        json!({ "iss": ISS, "sub": "alice", "exp": NOW + 600, "iat": NOW - 10 })
    }

    const VALID: JwtCheck = JwtCheck::Valid {
        issuer: 0,
        exp: NOW + 600,
        may_act: MayAct::Unrestricted,
        binding: Binding::NONE,
    };

    #[test]
    fn valid_rs256() {
        assert_eq!(check(&keys().sign("RS256", Some("rsa"), &claims())), VALID);
    }

    #[test]
    fn valid_es256() {
        assert_eq!(check(&keys().sign("ES256", Some("ec"), &claims())), VALID);
    }

    /// An issuer whose inline set is `keys`.
    fn issuer_with(keys: serde_json::Value) -> TrustedIssuer {
        TrustedIssuer {
            keys: KeySource::Inline(json!({ "keys": keys })),
            ..issuer(&[])
        }
    }

    #[test]
    fn keys_of_different_types_may_share_a_kid() {
        let k = keys();
        let mut rsa = k.rsa_jwk("shared");
        rsa["alg"] = "RS256".into();
        let iss = issuer_with(json!([rsa, k.ec_jwk("shared"), k.ed_jwk("shared")]));
        for alg in ["ES256", "RS256", "EdDSA"] {
            let t = k.sign(alg, Some("shared"), &claims());
            assert_eq!(check_with(&t, &iss), VALID, "{alg}");
        }
    }

    #[test]
    fn a_key_whose_key_ops_lack_verify_verifies_nothing() {
        let k = keys();
        let mut ec = k.ec_jwk("ec");
        ec["key_ops"] = json!(["encrypt"]);
        let mut ed = k.ed_jwk("ed");
        ed["key_ops"] = json!(["verify"]);
        let iss = issuer_with(json!([ec, ed]));
        let t = k.sign("ES256", Some("ec"), &claims());
        assert_eq!(check_with(&t, &iss), JwtCheck::UnknownKey(0));
        let t = k.sign("EdDSA", Some("ed"), &claims());
        assert_eq!(check_with(&t, &iss), VALID);
    }

    #[test]
    fn a_critical_header_extension_is_refused() {
        let header = json!({ "alg": "ES256", "kid": "ec", "crit": ["exp-ext"], "exp-ext": 1 });
        let t = keys().sign_with_header(&header, &claims());
        assert_eq!(check(&t), JwtCheck::Invalid(JwtError::Malformed));
        let header = json!({ "alg": "ES256", "kid": "ec", "crit": [] });
        let t = keys().sign_with_header(&header, &claims());
        assert_eq!(check(&t), JwtCheck::Invalid(JwtError::Malformed));
        let header = json!({ "alg": "ES256", "kid": "ec", "x-note": 1 });
        let t = keys().sign_with_header(&header, &claims());
        assert_eq!(check(&t), VALID, "a non-critical extension is ignored");
    }

    #[test]
    fn valid_eddsa() {
        assert_eq!(check(&keys().sign("EdDSA", Some("ed"), &claims())), VALID);
    }

    #[test]
    fn alg_none_is_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"rsa"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims().to_string());
        assert_eq!(
            check(&format!("{h}.{c}.")),
            JwtCheck::Invalid(JwtError::Algorithm)
        );
        assert_eq!(
            check(&format!("{h}.{c}")),
            JwtCheck::Invalid(JwtError::Malformed)
        );
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused() {
        use jwt_compact::alg::{Hs256, Hs256Key};
        use jwt_compact::{Algorithm, AlgorithmSignature};
        let public = serde_json::to_vec(&keys().rsa_jwk("rsa")).unwrap();
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"rsa"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims().to_string());
        let input = format!("{h}.{c}");
        let sig = Hs256.sign(&Hs256Key::new(&public), input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_bytes()));
        assert_eq!(check(&token), JwtCheck::Invalid(JwtError::Algorithm));
    }

    #[test]
    fn alg_that_does_not_fit_the_key_is_refused() {
        // An ES256 header naming the RSA key.
        let token = keys().sign("ES256", Some("rsa"), &claims());
        assert_eq!(check(&token), JwtCheck::Invalid(JwtError::Algorithm));
    }

    #[test]
    fn alg_off_the_issuers_list_is_refused() {
        let mut iss = issuer(&[]);
        iss.algorithms = vec![JwsAlg::Es256];
        let token = keys().sign("RS256", Some("rsa"), &claims());
        assert_eq!(
            check_with(&token, &iss),
            JwtCheck::Invalid(JwtError::Algorithm)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = keys().sign("RS256", Some("rsa"), &claims());
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut c = claims();
        c["sub"] = "mallory".into();
        parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
        assert_eq!(
            check(&parts.join(".")),
            JwtCheck::Invalid(JwtError::Signature)
        );
    }

    #[test]
    fn tampered_signature_is_refused() {
        let token = keys().sign("ES256", Some("ec"), &claims());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        bytes[10] ^= 0x01;
        let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(check(&forged), JwtCheck::Invalid(JwtError::Signature));
    }

    #[test]
    fn wrong_kid_asks_for_fresh_keys() {
        let token = keys().sign("RS256", Some("rotated"), &claims());
        assert_eq!(check(&token), JwtCheck::UnknownKey(0));
    }

    #[test]
    fn no_kid_with_one_fitting_key_verifies() {
        assert_eq!(check(&keys().sign("EdDSA", None, &claims())), VALID);
    }

    #[test]
    fn expired_is_refused() {
        let mut c = claims();
        c["exp"] = (NOW - 31).into();
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::Expired)
        );
    }

    #[test]
    fn expiry_inside_leeway_is_accepted() {
        let mut c = claims();
        c["exp"] = (NOW - 29).into();
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Valid {
                issuer: 0,
                exp: NOW - 29,
                may_act: MayAct::Unrestricted,
                binding: Binding::default(),
            }
        );
    }

    #[test]
    fn missing_exp_is_refused() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::MissingExp)
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let mut c = claims();
        c["nbf"] = (NOW + 31).into();
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::NotYetValid)
        );
        c["nbf"] = (NOW + 29).into();
        assert_eq!(check(&keys().sign("RS256", Some("rsa"), &c)), VALID);
    }

    #[test]
    fn iat_in_the_future_is_refused() {
        let mut c = claims();
        c["iat"] = (NOW + 3600).into();
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::NotYetValid)
        );
    }

    #[test]
    fn wrong_iss_is_refused() {
        let mut c = claims();
        c["iss"] = "https://evil.example".into();
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::UntrustedIssuer)
        );
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            check(&keys().sign("RS256", Some("rsa"), &c)),
            JwtCheck::Invalid(JwtError::UntrustedIssuer)
        );
    }

    #[test]
    fn aud_missing_string_or_list() {
        let iss = issuer(&["api://edge", "api://other"]);
        let mut c = claims();
        let token = |c: &serde_json::Value| keys().sign("ES256", Some("ec"), c);
        assert_eq!(
            check_with(&token(&c), &iss),
            JwtCheck::Invalid(JwtError::Audience)
        );
        c["aud"] = "api://edge".into();
        assert_eq!(check_with(&token(&c), &iss), VALID);
        c["aud"] = "api://nope".into();
        assert_eq!(
            check_with(&token(&c), &iss),
            JwtCheck::Invalid(JwtError::Audience)
        );
        c["aud"] = json!(["x", "api://other"]);
        assert_eq!(check_with(&token(&c), &iss), VALID);
        c["aud"] = json!(["x", "y"]);
        assert_eq!(
            check_with(&token(&c), &iss),
            JwtCheck::Invalid(JwtError::Audience)
        );
        // without configured audiences, aud is not checked
        assert_eq!(check(&token(&c)), VALID);
    }

    #[test]
    fn not_three_segments_is_malformed() {
        assert_eq!(check("abc.def"), JwtCheck::Invalid(JwtError::Malformed));
        assert_eq!(check("opaque"), JwtCheck::Invalid(JwtError::Malformed));
        let token = keys().sign("RS256", Some("rsa"), &claims());
        assert_eq!(
            check(&format!("{token}.extra")),
            JwtCheck::Invalid(JwtError::Malformed)
        );
    }

    #[test]
    fn bad_base64_is_malformed() {
        let token = keys().sign("RS256", Some("rsa"), &claims());
        let broken = token.replacen('.', ".!!", 1);
        assert_eq!(check(&broken), JwtCheck::Invalid(JwtError::Malformed));
    }

    #[test]
    fn a_100_kb_token_is_handled() {
        let mut c = claims();
        c["pad"] = "x".repeat(100 * 1024).into();
        let token = keys().sign("RS256", Some("rsa"), &c);
        assert!(token.len() > 100 * 1024);
        assert_eq!(check(&token), VALID);
        assert_eq!(
            extract(Some(&format!("Bearer {token}")), "Bearer ", 8192),
            Extracted::Malformed("token too large")
        );
    }

    #[test]
    fn no_keys_yet_is_reported() {
        let iss = issuer(&[]);
        let token = keys().sign("RS256", Some("rsa"), &claims());
        assert_eq!(
            verify_jwt(&token, std::slice::from_ref(&iss), |_| None, NOW),
            JwtCheck::NoKeys(0)
        );
    }
}

#[test]
fn fingerprint_is_short_stable_and_hides_the_token() {
    let f = fingerprint("secret-token");
    assert_eq!(f.len(), 8);
    assert_eq!(f, fingerprint("secret-token"));
    assert_ne!(f, fingerprint("secret-token2"));
    assert!(!f.contains("secret"));
}
