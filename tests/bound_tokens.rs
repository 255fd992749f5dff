//! End to end, sender-constrained tokens as an attacker would probe them: DPoP proofs (RFC
//! 9449) replayed on the same worker and on others, for another method or URI, too old or too
//! new, for another token, by another key, `none` and HS256, a private `jwk`, `typ: JWT`, two
//! `DPoP` headers and one joined with `,`, a bound token as `Bearer`, a flood against the replay
//! table; and certificate-bound tokens (RFC 8705) on a real TLS listener with client
//! certificates the test makes: its certificate, none, another one. The release `.wasm` in a
//! real Envoy (`TEST_WASM` loads another build).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{mint, now_s, start_echo, status_of, Envoy, EnvoySetup, Signer, TempDir, TestSts};

const ISS: &str = "https://idp.test";

/// The filter's configuration: the test STS, the test issuer's inline key, and `extra`.
fn config(signer: &Signer, extra: Value) -> Value {
    let c = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token",
                 "timeout_ms": 1000, "client_id": "edge", "client_secret": "sts-secret" },
        "exchange": { "audience": ["api"] },
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }]
    });
    support::merged(c, extra)
}

/// A client's DPoP key.
struct Client(p256::ecdsa::SigningKey);

impl Client {
    fn new() -> Self {
        Client(p256::ecdsa::SigningKey::random(&mut rand_core::OsRng))
    }

    fn jwk(&self) -> Value {
        serde_json::to_value(jwt_compact::jwk::JsonWebKey::from(self.0.verifying_key())).unwrap()
    }

    /// RFC 7638: the thumbprint a bound token's `cnf.jkt` holds.
    fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical))
    }

    /// A proof for `method` and `htu`, issued `age_s` ago, for `token`; `edit` changes the
    /// header and claims before signing.
    fn proof(
        &self,
        (method, htu): (&str, &str),
        age_s: i64,
        token: &str,
        edit: impl FnOnce(&mut Value, &mut Value),
    ) -> String {
        let mut header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk() });
        let iat = now_s() as i64 - age_s;
        let mut claims = json!({ "jti": jti(), "htm": method, "htu": htu, "iat": iat,
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token)) });
        edit(&mut header, &mut claims);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jwt_compact::alg::Es256.sign(&self.0, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_bytes()))
    }
}

fn jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A subject token of the test issuer with `cnf`.
fn bound(signer: &Signer, cnf: Value) -> String {
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": now_s() + 600, "cnf": cnf });
    signer.token(&claims, None)
}

/// A request as written, on a connection of its own: `method` `path`, `host`, and these
/// header lines; the whole answer.
fn ask(envoy: &Envoy, (method, path): (&str, &str), headers: &[String]) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\ncontent-length: 0\r\n",
        envoy.port
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    support::raw_answer(envoy, req.as_bytes())
}

/// The JSON body of an answer (the echo upstream's view of the request).
fn body_of(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn is_bad_proof(answer: &str) -> bool {
    status_of(answer) == 401
        && answer.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("www-authenticate: dpop ")
                && l.contains("invalid_dpop_proof")
        })
}

fn dpop(token: &str, proofs: &[&str]) -> Vec<String> {
    let mut h = vec![format!("authorization: DPoP {token}")];
    h.extend(proofs.iter().map(|p| format!("dpop: {p}")));
    h
}

#[test]
fn dpop_bound_tokens_need_a_fresh_proof_by_their_key_for_this_request() {
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let envoy = support::start_filter(sts.port, config(&signer, json!({})), 2, &[], &[]);
    let client = Client::new();
    let token = bound(&signer, json!({ "jkt": client.jkt() }));
    let htu = format!("http://127.0.0.1:{}/orders/1", envoy.port);
    let good = |age: i64| client.proof(("GET", &htu), age, &token, |_, _| {});

    let first = good(0);
    let ok = ask(
        &envoy,
        ("GET", "/orders/1?page=2"),
        &dpop(&token, &[&first]),
    );
    assert_eq!(status_of(&ok), 200, "{ok}");
    let seen = body_of(&ok);
    assert_eq!(
        seen["headers"]["authorization"].as_str().unwrap_or(""),
        format!("Bearer minted-1-aud-api-for-{token}")
    );
    assert!(
        seen["headers"].get("dpop").is_none(),
        "the proof reached the upstream: {seen}"
    );
    assert_eq!(sts.calls()[0].field("subject_token"), Some(token.as_str()));
    // A cache hit needs a fresh proof all the same; each proof is used once, on any worker
    // (every request comes on a connection of its own, spread over both workers).
    let second = good(0);
    assert_eq!(
        status_of(&ask(
            &envoy,
            ("GET", "/orders/1"),
            &dpop(&token, &[&second])
        )),
        200
    );
    for _ in 0..8 {
        for used in [&first, &second] {
            let again = ask(&envoy, ("GET", "/orders/1"), &dpop(&token, &[used]));
            assert!(is_bad_proof(&again), "a replay went through: {again}");
        }
    }
    assert_eq!(sts.count(), 1);

    let other = Client::new();
    let port = envoy.port;
    let cases: Vec<(&str, String)> = vec![
        (
            "another method",
            client.proof(("POST", &htu), 0, &token, |_, _| {}),
        ),
        (
            "another path",
            client.proof(
                ("GET", &format!("http://127.0.0.1:{port}/orders/2")),
                0,
                &token,
                |_, _| {},
            ),
        ),
        (
            "another host",
            client.proof(
                ("GET", &format!("http://localhost:{port}/orders/1")),
                0,
                &token,
                |_, _| {},
            ),
        ),
        (
            "another port",
            client.proof(
                ("GET", &format!("http://127.0.0.1:{}/orders/1", port + 1)),
                0,
                &token,
                |_, _| {},
            ),
        ),
        (
            "another scheme",
            client.proof(
                ("GET", &format!("https://127.0.0.1:{port}/orders/1")),
                0,
                &token,
                |_, _| {},
            ),
        ),
        ("too old", good(70)),
        ("in the future", good(-60)),
        (
            "another token's ath",
            client.proof(("GET", &htu), 0, "another-token", |_, _| {}),
        ),
        (
            "a key that is not the token's",
            other.proof(("GET", &htu), 0, &token, |_, _| {}),
        ),
        (
            "typ JWT",
            client.proof(("GET", &htu), 0, &token, |h, _| h["typ"] = "JWT".into()),
        ),
        (
            "a private jwk",
            client.proof(("GET", &htu), 0, &token, |h, _| {
                h["jwk"]["d"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into()
            }),
        ),
    ];
    for (name, p) in &cases {
        let answer = ask(&envoy, ("GET", "/orders/1"), &dpop(&token, &[p]));
        assert!(is_bad_proof(&answer), "{name}: {answer}");
        assert!(
            answer.contains("algs=\"ES256 RS256 PS256 EdDSA\""),
            "{name}: {answer}"
        );
    }
    // `none` and HS256, with and without a signature.
    let payload = first.split('.').nth(1).unwrap();
    for header in [
        r#"{"typ":"dpop+jwt","alg":"none"}"#,
        r#"{"typ":"dpop+jwt","alg":"HS256"}"#,
    ] {
        for sig in ["", "c2ln"] {
            let forged = format!("{}.{payload}.{sig}", URL_SAFE_NO_PAD.encode(header));
            let answer = ask(&envoy, ("GET", "/orders/1"), &dpop(&token, &[&forged]));
            assert!(is_bad_proof(&answer), "{header}: {answer}");
        }
    }
    // Two DPoP headers, or one joined with a comma.
    let (a, b) = (good(0), good(0));
    assert!(is_bad_proof(&ask(
        &envoy,
        ("GET", "/orders/1"),
        &dpop(&token, &[&a, &b])
    )));
    let joined = format!("{a},{b}");
    assert!(is_bad_proof(&ask(
        &envoy,
        ("GET", "/orders/1"),
        &dpop(&token, &[&joined])
    )));
    // The bound token as a plain bearer token: refused, before and after it was exchanged.
    let bearer = ask(
        &envoy,
        ("GET", "/orders/1"),
        &[format!("authorization: Bearer {token}")],
    );
    assert_eq!(status_of(&bearer), 401, "{bearer}");
    assert!(bearer.contains("invalid_token"), "{bearer}");
    assert_eq!(sts.count(), 1, "no refused request reached the STS");
    assert!(envoy.counter("dpop_verified") >= 2);
    assert!(envoy.counter("dpop_rejected") >= 16 + cases.len() as u64 + 6);
    assert_eq!(envoy.counter("bound_token_rejected"), 1);
}

#[test]
fn a_flood_of_proofs_fills_the_replay_table_and_is_refused_never_let_through_twice() {
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let extra = json!({ "dpop": { "replay_entries": 1024 } });
    let envoy = support::start_filter(sts.port, config(&signer, extra), 2, &[], &[]);
    let client = Client::new();
    let token = bound(&signer, json!({ "jkt": client.jkt() }));
    let htu = format!("http://127.0.0.1:{}/", envoy.port);
    let (mut accepted, mut full) = (Vec::new(), 0);
    for _ in 0..1400 {
        let p = client.proof(("GET", &htu), 0, &token, |_, _| {});
        let answer = ask(&envoy, ("GET", "/"), &dpop(&token, &[&p]));
        match status_of(&answer) {
            200 => accepted.push(p),
            503 => {
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after: 1"),
                    "{answer}"
                );
                full += 1;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert!(
        accepted.len() <= 1024,
        "{} proofs recorded in 1024 slots",
        accepted.len()
    );
    assert!(full > 0, "the table never filled");
    for p in accepted.iter().step_by(50) {
        let again = ask(&envoy, ("GET", "/"), &dpop(&token, &[p]));
        assert_ne!(
            status_of(&again),
            200,
            "a recorded proof went through twice"
        );
    }
}

/// Makes a CA, a server certificate for 127.0.0.1 and two client certificates in `dir`.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (the Makefile installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for (name, ext) in [
        ("server", Some("server.ext")),
        ("client1", None),
        ("client2", None),
    ] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let (csr, out) = (format!("{name}.csr"), format!("{name}.pem"));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &out,
        ];
        if let Some(ext) = ext {
            args.extend(["-extfile", ext]);
        }
        run(&args);
    }
}

/// SHA-256 of a PEM certificate's DER.
fn der_sha256(pem: &Path) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD;
    let text = std::fs::read_to_string(pem).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    Sha256::digest(STANDARD.decode(b64).unwrap()).to_vec()
}

/// `x5t#S256` of a PEM certificate: base64url(SHA-256 of its DER).
fn thumbprint(pem: &Path) -> String {
    URL_SAFE_NO_PAD.encode(der_sha256(pem))
}

/// A GET over TLS to `port` with `token`, presenting `cert` (or none); status and body.
fn tls_get(dir: &Path, port: u16, token: &str, cert: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.current_dir(dir).args([
        "-s",
        "--max-time",
        "10",
        "--cacert",
        "ca.pem",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(c) = cert {
        cmd.args(["--cert", &format!("{c}.pem"), "--key", &format!("{c}.key")]);
    }
    cmd.args([
        "-H",
        &format!("authorization: Bearer {token}"),
        &format!("https://127.0.0.1:{port}/orders"),
    ]);
    let out = cmd.output().expect("curl runs (the Makefile installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn a_certificate_bound_token_goes_on_only_on_a_connection_with_its_certificate() {
    let dir = TempDir::new("mtls");
    certificates(&dir.0);
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let tls_port = support::free_port();
    let path = |f: &str| dir.0.join(f).display().to_string();
    let setup = EnvoySetup {
        filter_config: config(&signer, json!({})),
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 1,
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start_edited(setup, |doc| {
        let listeners = doc["static_resources"]["listeners"].as_array_mut().unwrap();
        let mut tls = listeners[0].clone();
        tls["name"] = json!("tls");
        tls["address"]["socket_address"]["port_value"] = json!(tls_port);
        tls["filter_chains"][0]["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                // A client may come without a certificate; one it presents must be the CA's.
                "require_client_certificate": false,
                "common_tls_context": {
                    "tls_certificates": [{ "certificate_chain": { "filename": path("server.pem") },
                                           "private_key": { "filename": path("server.key") } }],
                    "validation_context": { "trusted_ca": { "filename": path("ca.pem") } }
                }
            }
        });
        listeners.push(tls);
    });
    let token = bound(
        &signer,
        json!({ "x5t#S256": thumbprint(&dir.0.join("client1.pem")) }),
    );
    // The TLS listener may come up a moment after the first one.
    let mut first = (0, Value::Null);
    for _ in 0..50 {
        first = tls_get(&dir.0, tls_port, &token, Some("client1"));
        if first.0 != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(first.0, 200, "its certificate: {}", first.1);
    assert!(first.1["headers"]["authorization"]
        .as_str()
        .unwrap_or("")
        .starts_with("Bearer minted-1"));
    assert_eq!(
        tls_get(&dir.0, tls_port, &token, Some("client2")).0,
        401,
        "another certificate"
    );
    assert_eq!(
        tls_get(&dir.0, tls_port, &token, None).0,
        401,
        "no certificate"
    );
    // Plain HTTP has no certificate at all.
    let plain = envoy.get_with_token("/orders", &token);
    assert_eq!(plain.status, 401, "{}", plain.body);
    // A cache hit is checked too.
    assert_eq!(tls_get(&dir.0, tls_port, &token, Some("client1")).0, 200);
    assert_eq!(tls_get(&dir.0, tls_port, &token, Some("client2")).0, 401);
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("bound_token_rejected"), 4);
}

/// A listener that ends TLS with a client certificate required (the CA's) and passes the
/// certificate's digest on to the test STS in `x-forwarded-client-cert`.
fn mtls_front(dir: &Path, port: u16) -> Value {
    let path = |f: &str| dir.join(f).display().to_string();
    json!({
        "name": "sts-tls",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{ "certificate_chain": { "filename": path("server.pem") },
                                           "private_key": { "filename": path("server.key") } }],
                    "validation_context": { "trusted_ca": { "filename": path("ca.pem") } } } } },
            "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "sts_tls",
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": { "subject": true },
                "route_config": { "virtual_hosts": [{ "name": "sts", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "sts" } }] }] },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }]
        }]
    })
}

#[test]
fn the_filter_authenticates_to_the_sts_by_its_clusters_client_certificate() {
    let dir = TempDir::new("sts-mtls");
    certificates(&dir.0);
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let front = support::free_port();
    let path = |f: &str| dir.0.join(f).display().to_string();
    // The STS cluster as the docs show it: a client certificate in its transport socket.
    let cluster = json!({
        "name": "sts_mtls", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "sts_mtls", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": front } } } }] }] },
        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{ "certificate_chain": { "filename": path("client1.pem") },
                                       "private_key": { "filename": path("client1.key") } }],
                "validation_context": { "trusted_ca": { "filename": path("ca.pem") } } } } }
    });
    let extra = json!({ "sts": { "cluster": "sts_mtls", "authority": "sts.test", "token_path": "/oauth2/token",
        "timeout_ms": 1000, "client_id": "edge", "client_auth": "tls_client_auth" } });
    let setup = EnvoySetup {
        filter_config: config(&signer, extra),
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 1,
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start_edited(setup, |doc| {
        let resources = &mut doc["static_resources"];
        resources["listeners"]
            .as_array_mut()
            .unwrap()
            .push(mtls_front(&dir.0, front));
        resources["clusters"].as_array_mut().unwrap().push(cluster);
    });
    let token = bound(&signer, Value::Null);
    let mut reply = envoy.get_with_token("/", &token);
    for _ in 0..30 {
        if reply.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        reply = envoy.get_with_token("/", &token);
    }
    assert_eq!(reply.status, 200, "{}", reply.body);
    let call = sts.calls().pop().expect("an STS call");
    assert_eq!(call.field("client_id"), Some("edge"));
    assert!(call.field("client_secret").is_none() && call.field("client_assertion").is_none());
    assert!(
        call.header("authorization").is_none(),
        "nothing secret in the call"
    );
    let xfcc = call
        .header("x-forwarded-client-cert")
        .unwrap_or_default()
        .to_string();
    let der_hash: String = (der_sha256(&dir.0.join("client1.pem")).iter())
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        xfcc.contains(&format!("Hash={der_hash}")),
        "the STS saw no client certificate: {xfcc}"
    );
    assert!(xfcc.contains("CN=client1"), "{xfcc}");
}
