//! Interoperability with a real STS nobody here wrote: IdentityPython idpyoidc (pinned by the
//! Makefile) as IdP and STS, through the real Envoy with the release `.wasm`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use jwt_compact::AlgorithmExt;
use serde_json::json;
use support::{start_echo, Envoy, EnvoySetup, StsReply, TempDir, TestSts};

/// idpyoidc serving on a port, with the subject tokens its code flow minted.
struct Idpy {
    child: Child,
    issuer: String,
    tokens: Vec<String>,
    erin: String,
    dir: TempDir,
}

impl Idpy {
    fn start(port: u16) -> Idpy {
        Idpy::launch(port, &[])
    }

    /// idpyoidc issuing its own opaque access tokens, which only introspection can judge.
    fn start_opaque(port: u16) -> Idpy {
        Idpy::launch(port, &["opaque"])
    }

    fn launch(port: u16, args: &[&str]) -> Idpy {
        let dir = TempDir::new("idpyoidc");
        let out = dir.0.join("tokens.json");
        let python = support::repo().join(".venv/bin/python");
        support::require(
            &python,
            "run `make interop` (or `make test`) to install idpyoidc",
        );
        let child = Command::new(python)
            .arg(support::repo().join("tests/interop/idpyoidc_sts.py"))
            .arg(port.to_string())
            .arg(&out)
            .args(args)
            .stdout(Stdio::null())
            // Its log (an ERROR line for the token it is meant to refuse, among others) goes to
            // a file that a failing assertion shows, not to the test run's output.
            .stderr(std::fs::File::create(dir.0.join("server.log")).expect("server log"))
            .spawn()
            .expect("start idpyoidc");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !out.exists() {
            assert!(Instant::now() < deadline, "idpyoidc did not start");
            thread::sleep(Duration::from_millis(100));
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        Idpy {
            child,
            issuer: info["issuer"].as_str().unwrap().to_string(),
            tokens: info["subject_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
            erin: info["erin_token"].as_str().unwrap().to_string(),
            dir,
        }
    }

    /// What idpyoidc logged so far.
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    fn jwks(&self, port: u16) -> jwt_compact::jwk::JsonWebKey<'static> {
        let text = ureq::get(&format!("http://127.0.0.1:{port}/jwks"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ec = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kty"] == "EC")
            .unwrap()
            .clone();
        serde_json::from_value(ec).unwrap()
    }
}

impl Drop for Idpy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy(port: u16, config: serde_json::Value) -> Envoy {
    Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: port,
        echo_port: start_echo(0),
        env: &[],
        concurrency: 1,
        clusters: &[("idp", port)],
        ..EnvoySetup::default()
    })
}

fn sts(auth: &str) -> serde_json::Value {
    json!({ "cluster": "sts", "authority": "127.0.0.1", "token_path": "/token", "client_id": "edge-proxy",
            "client_secret": "edge-secret", "client_auth": auth })
}

fn minted(r: &support::Reply) -> String {
    let auth = r
        .upstream_header("authorization")
        .unwrap_or_else(|| panic!("no token upstream: {}", r.body));
    auth.as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

/// The CIBA user consent with idpyoidc's backchannel endpoint and CIBA token grant (with the
/// glue's marked fix of its token grant). The test plays the user's device.
#[test]
fn idpyoidc_asks_the_user_and_the_filter_polls_for_the_token() {
    let port = support::free_port();
    let idp = Idpy::start(port);
    let mut sts = sts("client_secret_basic");
    sts["ciba"] = json!({ "path": "/bc-authorize", "login_hint": "sub", "wait_s": 15 });
    let config = json!({
        "sts": sts,
        "trusted_issuers": [{ "issuer": idp.issuer, "algorithms": ["ES256"],
                               "jwks_uri": { "cluster": "idp", "authority": "127.0.0.1", "path": "/jwks" } }],
        "exchange": { "grant": "ciba", "scope": "openid" }
    });
    let envoy = std::sync::Arc::new(envoy(port, config));
    let device = |path: &str| format!("http://127.0.0.1:{port}/_device/{path}");
    let pending = || -> Vec<String> {
        let text = ureq::get(&device("pending"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let wait_for = |user: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending().iter().any(|u| u == user) {
            assert!(
                Instant::now() < deadline,
                "no backchannel request for {user}\n{}",
                idp.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };

    // diana approves on her device before the filter's first poll (interval 3 s).
    let (e, token) = (envoy.clone(), idp.tokens[0].clone());
    let waiting = thread::spawn(move || loop {
        // Until the filter has idpyoidc's keys, it answers 503.
        let r = e.get_with_token("/orders", &token);
        if r.status != 503 || !r.body.contains("not available yet") {
            return r;
        }
        thread::sleep(Duration::from_millis(100));
    });
    wait_for("diana");
    ureq::post(&device("approve"))
        .send_string(r#"{"user":"diana"}"#)
        .unwrap();
    let r = waiting.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}\n{}",
        r.body,
        envoy.log_text(),
        idp.log_text()
    );
    let claims = support::claims_of(&minted(&r)).unwrap();
    assert_eq!(claims["sub"], "diana", "{claims}");
    assert_eq!(claims["client_id"], "edge-proxy", "{claims}");

    // Deviation of idpyoidc: a poll while erin has not answered gets invalid_request ("No
    // authentication found"), not authorization_pending. The filter does not take it for
    // pending: the STS refused, 401.
    let r = envoy.get_with_token("/orders", &idp.erin);
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn idpyoidc_exchanges_what_the_filter_sends() {
    let port = support::free_port();
    let idp = Idpy::start(port);
    let jwk = idp.jwks(port);
    let key = p256::ecdsa::VerifyingKey::try_from(&jwk).expect("an ES256 key");

    // client_secret_basic, with the subject JWT validated against idpyoidc's JWKS (ES256).
    let config = json!({
        "sts": sts("client_secret_basic"),
        "trusted_issuers": [{ "issuer": idp.issuer, "algorithms": ["ES256"],
                               "jwks_uri": { "cluster": "idp", "authority": "127.0.0.1", "path": "/jwks" } }],
        "exchange": { "audience": ["https://orders.example"] },
        "routes": [{ "match": { "path_prefix": "/elsewhere" }, "exchange": { "audience": ["https://not-allowed.example"] } }]
    });
    let basic = envoy(port, config);
    let r = (0..100)
        .map(|_| {
            thread::sleep(Duration::from_millis(50));
            basic.get_with_token("/orders", &idp.tokens[0])
        })
        .find(|r| r.status != 503)
        .expect("keys arrive");
    assert_eq!(r.status, 200, "{}\n{}", r.body, basic.log_text());
    let token = minted(&r);
    let verified = jwt_compact::alg::Es256
        .validator::<serde_json::Value>(&key)
        .validate(&jwt_compact::UntrustedToken::new(&token).unwrap())
        .expect("the minted token verifies against idpyoidc's JWKS");
    assert_eq!(verified.claims().custom["client_id"], "edge-proxy");
    assert_ne!(token, idp.tokens[0]);

    // An audience idpyoidc's policy does not allow: invalid_target → 403.
    let r = basic.get_with_token("/elsewhere", &idp.tokens[1]);
    assert_eq!(r.status, 403, "{}", r.body);

    // client_secret_post, the STS alone judging subject tokens.
    let config = json!({ "sts": sts("client_secret_post"), "exchange": { "audience": ["https://orders.example"] } });
    let post = envoy(port, config);
    let r = post.get_with_token("/orders", &idp.tokens[2]);
    assert_eq!(r.status, 200, "{}\n{}", r.body, post.log_text());
    let claims = support::claims_of(&minted(&r)).unwrap();
    assert_eq!(claims["client_id"], "edge-proxy");

    // Expected failure: a subject token idpyoidc did not issue. idpyoidc logs an ERROR for it
    // (kept in its log file) and answers invalid_request → 401.
    let r = post.get_with_token("/orders", "not-issued-by-idpyoidc");
    assert_eq!(r.status, 401, "{}\n{}", r.body, idp.log_text());

    // idpyoidc stopped → 503; restarted → exchanges again.
    drop(idp);
    let r = post.get_with_token("/orders", "another-token");
    assert_eq!(r.status, 503, "{}", r.body);
    let idp = Idpy::start(port);
    let r = post.get_with_token("/orders", &idp.tokens[0]);
    assert_eq!(r.status, 200, "{}\n{}", r.body, post.log_text());
}

/// idpyoidc's RFC 7662 introspection endpoint judging its own opaque access tokens for the
/// filter, then its token endpoint exchanging them.
#[test]
fn idpyoidc_introspects_its_opaque_tokens_for_the_filter() {
    let port = support::free_port();
    let idp = Idpy::start_opaque(port);
    let config = |secret: &str| {
        let introspection = json!({ "cluster": "idp", "authority": "127.0.0.1",
            "path": "/introspection", "client_id": "edge-proxy", "client_secret": secret });
        json!({
            "sts": sts("client_secret_basic"),
            "trusted_issuers": [{ "issuer": idp.issuer, "audiences": ["edge-proxy"],
                                   "introspection": introspection }],
            "exchange": { "audience": ["https://orders.example"] },
            "output": { "claims_to_headers": [{ "claim": "client_id", "header": "x-client" },
                                              { "claim": "sub", "header": "x-user" }] }
        })
    };
    let envoy = envoy(port, config("edge-secret"));
    let token = &idp.tokens[0];
    assert!(!token.contains('.'), "an opaque token: {token}");
    for _ in 0..3 {
        let r = envoy.get_with_token("/orders", token);
        assert_eq!(
            r.status,
            200,
            "{}\n{}\n{}",
            r.body,
            envoy.log_text(),
            idp.log_text()
        );
        assert_ne!(
            &minted(&r),
            token,
            "idpyoidc's exchanged token, not the caller's"
        );
        // Only the introspection answer knows which client the token was issued to.
        assert_eq!(r.upstream_header("x-client"), Some(json!("webapp")));
        assert!(r.upstream_header("x-user").is_some());
    }
    assert_eq!(envoy.counter("introspections"), 1, "cached");
    assert_eq!(envoy.counter("sts_calls"), 1);

    // A token idpyoidc never issued: active false → 401, and no exchange.
    let r = envoy.get_with_token("/orders", "bm90LWlzc3VlZC1ieS1pZHB5b2lkYw==");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(envoy.counter("introspection_inactive"), 1);
    assert_eq!(envoy.counter("sts_calls"), 1);

    // The filter's credentials refused at the introspection endpoint → 502.
    let wrong = self::envoy(port, config("not-the-secret"));
    let r = wrong.get_with_token("/orders", &idp.tokens[1]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(wrong.counter("introspection_errors"), 1);
}

/// Authlib serving its JWT bearer grant with `private_key_jwt` client authentication.
struct Authlib {
    child: Child,
    _dir: TempDir,
}

impl Authlib {
    fn start(port: u16, idp: &support::Signer, client: &p256::ecdsa::SigningKey) -> Authlib {
        let dir = TempDir::new("authlib");
        let keys = dir.0.join("keys.json");
        let client_jwk =
            serde_json::to_value(jwt_compact::jwk::JsonWebKey::from(client.verifying_key()))
                .unwrap();
        std::fs::write(
            &keys,
            json!({ "idp": idp.jwk(), "client": client_jwk }).to_string(),
        )
        .unwrap();
        let child = Command::new(support::repo().join(".venv/bin/python"))
            .arg(support::repo().join("tests/interop/authlib_as.py"))
            .arg(port.to_string())
            .arg(&keys)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start authlib");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "authlib did not start");
            thread::sleep(Duration::from_millis(100));
        }
        Authlib { child, _dir: dir }
    }
}

impl Drop for Authlib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jwt_bearer_envoy(port: u16, client_key: &p256::ecdsa::SigningKey) -> Envoy {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = client_key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let config = json!({
        "sts": { "cluster": "sts", "authority": format!("127.0.0.1:{port}"), "token_path": "/token",
                 "client_id": "edge-proxy", "client_auth": "private_key_jwt",
                 "private_key": { "pem_env": "CLIENT_KEY", "alg": "ES256",
                                  "audience": format!("http://127.0.0.1:{port}/token") } },
        "exchange": { "grant": "jwt_bearer", "scope": "orders" }
    });
    Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: port,
        echo_port: start_echo(0),
        env: &[("CLIENT_KEY", &pem)],
        concurrency: 1,
        clusters: &[],
        ..EnvoySetup::default()
    })
}

#[test]
fn authlib_accepts_the_jwt_bearer_grant_and_client_assertions() {
    let port = support::free_port();
    let idp = support::Signer::new("idp-1");
    let client_key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let _authlib = Authlib::start(port, &idp, &client_key);
    let envoy = jwt_bearer_envoy(port, &client_key);
    let assertion = |sub: &str| {
        idp.token(
            &json!({ "iss": "https://idp.interop", "sub": sub, "aud": format!("http://127.0.0.1:{port}/token"),
                     "exp": support::now_s() + 300, "iat": support::now_s() }),
            None,
        )
    };

    let good = assertion("alice");
    let r = envoy.get_with_token("/", &good);
    assert_eq!(r.status, 200, "{}\n{}", r.body, envoy.log_text());
    assert_ne!(
        minted(&r),
        good,
        "the upstream gets Authlib's token, not the assertion"
    );

    // A tampered assertion: Authlib refuses it (invalid_grant) → 401.
    let mut parts: Vec<String> = assertion("bob").split('.').map(String::from).collect();
    parts[1] = support::claims_of(&good)
        .map(|mut c| {
            c["sub"] = "mallory".into();
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                c.to_string(),
            )
        })
        .unwrap();
    let r = envoy.get_with_token("/", &parts.join("."));
    assert_eq!(r.status, 401, "{}", r.body);

    // A filter whose client key Authlib does not know: its assertions fail (invalid_client) → 502.
    let stranger = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let other = jwt_bearer_envoy(port, &stranger);
    let r = other.get_with_token("/", &assertion("carol"));
    assert_eq!(r.status, 502, "{}", r.body);
}

/// A chain's second hop at Authlib: the home STS (the test's) mints a JWT grant for the
/// subject; Authlib, as the partner's token service, redeems it with its RFC 7523 grant and
/// `private_key_jwt`. The upstream gets Authlib's token; Authlib never sees the subject token.
#[test]
fn authlib_redeems_a_chains_first_hop_as_its_jwt_bearer_grant() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let port = support::free_port();
    let idp = std::sync::Arc::new(support::Signer::new("idp-1"));
    let client_key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let _authlib = Authlib::start(port, &idp, &client_key);
    let signer = idp.clone();
    let home = TestSts::start(0, move |_, call| {
        let subject = call.field("subject_token").unwrap_or("");
        let mut grant = signer.token(
            &json!({ "iss": "https://idp.interop", "sub": format!("user-{subject}"),
                     "aud": format!("http://127.0.0.1:{port}/token"),
                     "exp": support::now_s() + 120, "iat": support::now_s() }),
            None,
        );
        if subject == "tampered" {
            grant.push('A');
        }
        StsReply::json(
            200,
            json!({ "access_token": grant, "token_type": "N_A", "expires_in": 120,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:jwt" }),
        )
    });
    let pem = client_key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let config = json!({
        "sts": { "cluster": "sts", "authority": "sts.home.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "home-secret" },
        "token_services": { "partner": {
            "cluster": "authlib", "authority": format!("127.0.0.1:{port}"), "token_path": "/token",
            "client_id": "edge-proxy", "client_auth": "private_key_jwt",
            "private_key": { "pem_env": "CLIENT_KEY", "alg": "ES256",
                             "audience": format!("http://127.0.0.1:{port}/token") } } },
        "exchange": { "requested_token_type": "urn:ietf:params:oauth:token-type:jwt",
                      "audience": format!("http://127.0.0.1:{port}/token"),
                      "then": { "sts": "partner", "grant": "jwt_bearer", "scope": "orders" } }
    });
    let envoy = Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: home.port,
        echo_port: start_echo(0),
        env: &[("CLIENT_KEY", &pem)],
        concurrency: 1,
        clusters: &[("authlib", port)],
        ..EnvoySetup::default()
    });
    let r = envoy.get_with_token("/", "alice");
    assert_eq!(r.status, 200, "{}\n{}", r.body, envoy.log_text());
    let token = minted(&r);
    let grant = home.calls()[0].field("subject_token").map(str::to_string);
    assert_eq!(grant.as_deref(), Some("alice"));
    assert!(
        !token.is_empty() && !token.contains("alice"),
        "Authlib's own token: {token}"
    );
    assert_ne!(
        support::claims_of(&token).map(|c| c["iss"].clone()),
        Some(json!("https://idp.interop"))
    );
    let again = envoy.get_with_token("/", "alice");
    assert_eq!(minted(&again), token, "cached: one chain for both requests");
    assert_eq!(home.count(), 1);
    assert_eq!(envoy.counter("service.partner.calls"), 1);
    // Authlib refuses a grant whose signature it cannot verify: invalid_grant → 401.
    let r = envoy.get_with_token("/", "tampered");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(envoy.counter("service.partner.calls"), 2);
}
