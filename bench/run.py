#!/usr/bin/env python3
"""`make bench`: the filter against plain Envoy, ext_authz and jwt_authn, measured in one run.

Everything listens on 127.0.0.1. A backend Envoy serves the upstream (direct_response), an
ext_authz authorizer that answers with a replaced Authorization header, and stand-in STS
endpoints (a good answer, a rejection, and delayed answers). Front Envoys, each with
--concurrency 1, are started in turn for each configuration and loaded with wrk; rounds are
interleaved and every ratio is taken against plain Envoy of the same round.
"""
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/token_exchange_wasm.wasm")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
TOKENS = int(os.environ.get("BENCH_TOKENS", "300000"))
# Another build of this module (e.g. an earlier commit's) measured in the same rounds.
BASELINE = os.environ.get("BENCH_BASELINE_WASM")
# The reference modules `make reference` builds from bench/reference.
NOOP = os.path.join(ROOT, "target/bench/reference-noop.wasm")
PATH_READ = os.path.join(ROOT, "target/bench/reference-path.wasm")
MINIMAL_HIT = os.path.join(ROOT, "target/bench/reference-hit.wasm")
# `make lean`: this module without the trusted-issuers and private-key-jwt features.
LEAN = os.path.join(ROOT, "target/lean/wasm32-wasip1/release/token_exchange_wasm.wasm")
NATIVE = os.path.join(ROOT, "target/native/libtoken_exchange.so")
# Where Envoy finds libtoken_exchange.so (`make native`); every Envoy started here inherits it.
os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = os.path.dirname(NATIVE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMP = tempfile.mkdtemp(prefix="txw-bench-")

FRONT, FRONT_ADMIN, BACK_ADMIN = 18000, 18900, 19900
UPSTREAM, AUTHZ, STS_OK, STS_REJECT, STS_SLOW, UPSTREAM_SLOW, STS_COALESCE = range(19001, 19008)
INTROSPECT_OK, INTROSPECT_SLOW, STS_SHORT = 19008, 19009, 19010
PARTNER = "https://partner.bench"
STS_DELAY_MS, COALESCE_DELAY_MS, STALL_DELAY_MS = 5, 300, 100
ISSUER = "https://idp.bench"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rs256_material():
    """An RSA key, its JWKS, an RS256 token valid for an hour, and one bound to a DPoP key
    (`cnf.jkt`) with that key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
    jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "n": b64url(n), "e": b64url(pub.e.to_bytes(3, "big"))}
    header = b64url(json.dumps({"alg": "RS256", "kid": "bench", "typ": "JWT"}).encode())

    def sign(extra):
        claims = {"iss": ISSUER, "sub": "bench-user", "aud": "api://bench", "exp": int(time.time()) + 3600,
                  "scope": "openid bench:read", "tenant": "acme", **extra}
        payload = b64url(json.dumps(claims).encode())
        sig = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(sig)}"

    bound = {}
    for alg in ("ES256", "EdDSA"):
        client = DpopClient(alg)
        bound[alg] = (sign({"cnf": {"jkt": client.jkt}}), client)
    return {"keys": [jwk]}, sign({}), bound


class DpopClient:
    """A client's DPoP key (ES256: P-256, EdDSA: Ed25519), signing fresh proofs (RFC 9449) for GET
    of the front's `/`."""

    def __init__(self, alg):
        self.alg = alg
        if alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            nums = self.key.public_key().public_numbers()
            self.jwk = {"crv": "P-256", "kty": "EC", "x": b64url(nums.x.to_bytes(32, "big")),
                        "y": b64url(nums.y.to_bytes(32, "big"))}
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
            self.jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url(self.key.public_key().public_bytes_raw())}
        canonical = json.dumps(self.jwk, separators=(",", ":"), sort_keys=True).encode()
        self.jkt = b64url(hashes_sha256(canonical))

    def proofs(self, token, count):
        """`count` proofs for `token`, each with its own `jti`, issued now."""
        header = b64url(json.dumps({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}).encode())
        ath = b64url(hashes_sha256(token.encode()))
        now, out = int(time.time()), []
        for i in range(count):
            claims = {"jti": f"{now}-{i}", "htm": "GET", "htu": f"http://127.0.0.1:{FRONT}/", "iat": now, "ath": ath}
            signing = f"{header}.{b64url(json.dumps(claims).encode())}"
            out.append(f"{signing}.{b64url(self.sign(signing.encode()))}")
        return out


    def sign(self, data):
        if self.alg == "EdDSA":
            return self.key.sign(data)
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def hashes_sha256(data):
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]}}


def hcm(prefix, routes, filters):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": prefix,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def listener(name, port, routes, filters=()):
    return {"name": name, "address": addr(port), "filter_chains": [{"filters": [hcm(name, routes, list(filters))]}]}


def direct(status, body, headers=()):
    return [{"match": {"prefix": "/"}, "direct_response": {"status": status, "body": {"inline_string": body}},
             "response_headers_to_add": [{"header": {"key": k, "value": v}} for k, v in headers]}]


def delay(ms):
    return {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"fixed_delay": f"{ms / 1000}s", "percentage": {"numerator": 100}}}}


def backend_config():
    token = json.dumps({"access_token": "minted-by-bench-sts", "token_type": "Bearer",
                        "issued_token_type": ACCESS, "expires_in": 3600})
    short = json.dumps({"access_token": "short-lived", "token_type": "Bearer", "issued_token_type": ACCESS,
                        "expires_in": 3})
    reject = json.dumps({"error": "invalid_grant"})
    active = json.dumps({"active": True, "iss": PARTNER, "aud": "api://bench", "sub": "bench-user",
                         "scope": "bench:read", "exp": 4102444800})
    listeners = [
        listener("upstream", UPSTREAM, direct(200, "ok")),
        listener("authz", AUTHZ, direct(200, "", [("authorization", "Bearer minted-by-authorizer")])),
        listener("sts_ok", STS_OK, direct(200, token, [("content-type", "application/json")])),
        listener("sts_reject", STS_REJECT, direct(400, reject, [("content-type", "application/json")])),
        listener("sts_slow", STS_SLOW, direct(200, token), [delay(STS_DELAY_MS)]),
        listener("upstream_slow", UPSTREAM_SLOW, direct(200, "ok"), [delay(STS_DELAY_MS)]),
        listener("sts_coalesce", STS_COALESCE, direct(200, token), [delay(COALESCE_DELAY_MS)]),
        listener("introspect_ok", INTROSPECT_OK, direct(200, active, [("content-type", "application/json")])),
        listener("introspect_slow", INTROSPECT_SLOW, direct(200, active), [delay(STS_DELAY_MS)]),
        listener("sts_short", STS_SHORT, direct(200, short), [delay(STALL_DELAY_MS)]),
    ]
    return {"admin": {"address": addr(BACK_ADMIN)}, "static_resources": {"listeners": listeners}}


def wasm_filter(config, module=WASM):
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "token_exchange",
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(config)},
                   "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": module}}}}}}


def native_filter(config):
    """The same filter as an Envoy dynamic module (`make native`)."""
    return {"name": "token_exchange", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "token_exchange", "do_not_close": True},
        "filter_name": "token_exchange",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(config)}}}


def introspecting(cluster):
    """A trusted partner whose opaque tokens are introspected through `cluster`."""
    return {"trusted_issuers": [{"issuer": PARTNER, "audiences": ["api://bench"], "introspection": {
        "cluster": cluster, "authority": "partner.bench", "path": "/introspect", "client_id": "bench",
        "client_secret": "bench-secret", "timeout_ms": 5000}}]}


def filter_config(sts_cluster, extra=None):
    c = {"sts": {"cluster": sts_cluster, "authority": "sts.bench", "token_path": "/token", "client_id": "bench",
                 "client_secret": "bench-secret", "timeout_ms": 5000},
         "exchange": {"audience": ["bench-api"]}}
    c.update(extra or {})
    return c


def front_config(filters, upstream_port=UPSTREAM, route_disables=None):
    clusters = [cluster("upstream", upstream_port), cluster("authz", AUTHZ), cluster("sts_ok", STS_OK),
                cluster("sts_reject", STS_REJECT), cluster("sts_slow", STS_SLOW), cluster("sts_coalesce", STS_COALESCE),
                cluster("introspect_ok", INTROSPECT_OK), cluster("introspect_slow", INTROSPECT_SLOW),
                cluster("sts_short", STS_SHORT)]
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    if route_disables:
        # Envoy's own per-route switch: the filter is not called at all on this route.
        routes[0]["typed_per_filter_config"] = {route_disables: {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}
    return {"admin": {"address": addr(FRONT_ADMIN)},
            "static_resources": {"listeners": [listener("front", FRONT, routes, filters)], "clusters": clusters}}


def ext_authz():
    return {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "http_service": {"server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "1s"},
                         "authorization_request": {"allowed_headers": {"patterns": [{"exact": "authorization"}]}},
                         "authorization_response": {"allowed_upstream_headers": {"patterns": [{"exact": "authorization"}]}}},
        "failure_mode_allow": False}}


def jwt_authn(jwks, cache):
    provider = {"issuer": ISSUER, "audiences": ["api://bench"], "local_jwks": {"inline_string": json.dumps(jwks)},
                "forward": False}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}


class Envoy:
    def __init__(self, name, config, admin, concurrency=1):
        path = os.path.join(TMP, f"{name}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.log = os.path.join(TMP, f"{name}.log")
        self.admin = admin
        started = time.time()
        self.proc = subprocess.Popen([ENVOY, "-c", path, "--concurrency", str(concurrency), "--disable-hot-restart",
                                      "-l", "warn", "--log-path", self.log], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"envoy {name} exited:\n" + open(self.log).read())
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                    self.ready_s = time.time() - started
                    return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"envoy {name} not ready:\n" + open(self.log).read())

    def cpu_s(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stat(self, name):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats?filter={name}").read().decode()
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wrk(args, script=None, duration=SECONDS, connections=32, threads=2):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"] + args
    if script:
        path = os.path.join(TMP, "script.lua")
        with open(path, "w") as f:
            f.write(script)
        cmd += ["-s", path]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{FRONT}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {p: parse_ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}
    most = parse_ms(re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+\w+)", out).group(1))
    return {"rps": rps, "total": total, "p50": lat["50"], "p99": lat["99"], "max": most,
            "errors": int(non2xx.group(1)) if non2xx else 0}


def parse_ms(text):
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


UNIQUE_TOKENS = """
local counter, prefix, threads = 0, "%s", 0
function setup(thread) threads = threads + 1; thread:set("id", tostring(threads)) end
function init(args) prefix = prefix .. "-" .. id .. "-" end
function request()
  counter = counter + 1
  return wrk.format(nil, nil, { ["authorization"] = "Bearer " .. prefix .. counter })
end
"""


# Each request a proof of its own, from a file of fresh ones: each wrk thread reads its share.
DPOP_PROOFS = """
local proofs, n, threads, token = {}, 0, 0, "%s"
function setup(thread) threads = threads + 1; thread:set("id", threads) end
function init(args)
  local i = 0
  for line in io.lines("%s") do
    i = i + 1
    if i %% %d == id - 1 then proofs[#proofs + 1] = line end
  end
end
function request()
  n = n + 1
  return wrk.format(nil, nil, { ["authorization"] = "DPoP " .. token, ["dpop"] = proofs[(n - 1) %% #proofs + 1] })
end
"""


def dpop_script(token, client, count=80000, threads=2):
    """A wrk script sending `token` with a fresh proof per request."""
    path = os.path.join(TMP, "proofs.txt")
    with open(path, "w") as f:
        f.write("\n".join(client.proofs(token, count)) + "\n")
    return DPOP_PROOFS % (token, path, threads)


def measure(name, filters, token, route_disables=None):
    envoy = Envoy(name, front_config(filters, route_disables=route_disables), FRONT_ADMIN)
    try:
        if isinstance(token, tuple):  # a DPoP-bound token and its client: fresh proofs
            bound, client = token
            wrk([], dpop_script(bound, client, 20000), duration=1)
            args, script = [], dpop_script(bound, client)
        else:
            args, script = ["-H", f"authorization: Bearer {token}"], None
            wrk(args, duration=1)  # warm-up: first exchange, JIT, connections
        cpu0 = envoy.cpu_s()
        r = wrk(args, script)
        r["cpu_us"] = (envoy.cpu_s() - cpu0) * 1e6 / max(r["total"], 1)
        r["rss"] = envoy.rss_mb()
        if r["errors"]:
            sys.exit(f"{name}: {r['errors']} non-2xx answers:\n" + open(envoy.log).read()[-3000:])
        return r
    finally:
        envoy.stop()


def main():
    jwks, rs_token, dpop_bound = rs256_material()
    issuers = {"trusted_issuers": [{"issuer": ISSUER, "algorithms": ["RS256"], "audiences": ["api://bench"], "jwks": jwks}]}
    # A two-condition policy and two claim headers, against the same hit without them.
    authorizer = dict(issuers, require=[{"scopes": ["bench:read"], "claims": {"tenant": ["acme"]}}],
                      output={"claims_to_headers": [{"claim": "sub", "header": "x-user"},
                                                    {"claim": "tenant", "header": "x-tenant"}]})
    # Room for every proof of the rounds' DPoP runs inside the iat window.
    dpop = dict(issuers, dpop={"replay_entries": 1048576})
    only = os.environ.get("BENCH_ONLY")
    configs = [
        ("plain Envoy", [], "opaque-bench-token"),
        ("plain Envoy, RS256 token", [], rs_token),
        ("reference: no-op module", [wasm_filter({}, NOOP)], "opaque-bench-token"),
        ("reference: no-op module + :path read", [wasm_filter({}, PATH_READ)], "opaque-bench-token"),
        ("reference: minimal hit module", [wasm_filter({}, MINIMAL_HIT)], "opaque-bench-token"),
        ("reference: minimal hit module, RS256 token", [wasm_filter({}, MINIMAL_HIT)], rs_token),
        ("token-exchange, bypass route",
         [wasm_filter(filter_config("sts_ok", {"routes": [{"match": {"path_prefix": "/"}, "bypass": True}]}))],
         "opaque-bench-token"),
        ("token-exchange, route disabled in Envoy", [wasm_filter(filter_config("sts_ok"))], "opaque-bench-token"),
        ("token-exchange, cache hit", [wasm_filter(filter_config("sts_ok"))], "opaque-bench-token"),
        ("token-exchange + trusted issuers, hit", [wasm_filter(filter_config("sts_ok", issuers))], rs_token),
        ("token-exchange + trusted issuers, DPoP-bound token, hit (ES256 proofs)",
         [wasm_filter(filter_config("sts_ok", dpop))], dpop_bound["ES256"]),
        ("token-exchange + trusted issuers, DPoP-bound token, hit (EdDSA proofs)",
         [wasm_filter(filter_config("sts_ok", dpop))], dpop_bound["EdDSA"]),
        ("token-exchange + trusted issuers, hit, every filter_state field",
         [wasm_filter(filter_config("sts_ok", dict(issuers, output={"filter_state": [
             "outcome", "error", "sub", "iss", "actor", "service", "sts_ms", "token_id"]})))], rs_token),
        ("token-exchange + trusted issuers, policy + claim headers, hit",
         [wasm_filter(filter_config("sts_ok", authorizer))], rs_token),
        ("token-exchange + introspection, cache hit, introspected token",
         [wasm_filter(filter_config("sts_ok", introspecting("introspect_ok")))], "opaque-bench-token"),
        ("native module, bypass route",
         [native_filter(filter_config("sts_ok", {"routes": [{"match": {"path_prefix": "/"}, "bypass": True}]}))],
         "opaque-bench-token"),
        ("native module, cache hit", [native_filter(filter_config("sts_ok"))], "opaque-bench-token"),
        ("native module + trusted issuers, hit", [native_filter(filter_config("sts_ok", issuers))], rs_token),
        ("native module + trusted issuers, DPoP-bound token, hit (ES256 proofs)",
         [native_filter(filter_config("sts_ok", dpop))], dpop_bound["ES256"]),
        ("native module + trusted issuers, DPoP-bound token, hit (EdDSA proofs)",
         [native_filter(filter_config("sts_ok", dpop))], dpop_bound["EdDSA"]),
        ("ext_authz HTTP authorizer", [ext_authz()], "opaque-bench-token"),
        ("jwt_authn RS256, no cache", [jwt_authn(jwks, False)], rs_token),
        ("jwt_authn RS256, cache", [jwt_authn(jwks, True)], rs_token),
    ]
    if BASELINE:
        configs[4:4] = [
            ("baseline module, cache hit", [wasm_filter(filter_config("sts_ok"), BASELINE)], "opaque-bench-token"),
            ("baseline module + trusted issuers, hit", [wasm_filter(filter_config("sts_ok", issuers), BASELINE)],
             rs_token),
            ("baseline module, bypass route",
             [wasm_filter(filter_config("sts_ok", {"routes": [{"match": {"path_prefix": "/"}, "bypass": True}]}),
                          BASELINE)],
             "opaque-bench-token"),
        ]
    if only:
        wanted = only.split("|")
        configs = [c for c in configs if c[0] == "plain Envoy" or any(w in c[0] for w in wanted)]
    backend = Envoy("backend", backend_config(), BACK_ADMIN)
    results = {name: [] for name, _, _ in configs}
    try:
        for rnd in range(ROUNDS):
            plain = None
            for name, filters, token in configs:
                disables = "envoy.filters.http.wasm" if "disabled in Envoy" in name else None
                r = measure(f"front-{rnd}", filters, token, disables)
                plain = plain or r
                r["ratio"] = r["rps"] / plain["rps"]
                r["cpu_over_plain"] = r["cpu_us"] - plain["cpu_us"]
                results[name].append(r)
                print(f"round {rnd + 1}: {name}: {r['rps']:.0f} req/s", file=sys.stderr)
        print_table(results)
        extras = os.environ.get("BENCH_EXTRAS", "1")
        if extras == "1":
            footprint(issuers, rs_token)
            extra_runs(backend)
        if extras in ("1", "expiry"):
            expiry_runs()
    finally:
        backend.stop()


def sts_calls(n):
    return f"{n} STS call" if n == 1 else f"{n} STS calls"


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def best(rows, key):
    return min(r[key] for r in rows)


def print_table(results):
    print(f"\nmedians of {ROUNDS} interleaved rounds, wrk -t2 -c32 -d{SECONDS}s, front Envoy "
          f"--concurrency 1; CPU per request: the best round, and the median of each round's "
          f"difference to plain Envoy of that round\n")
    print("| front Envoy | req/s | p50 ms | p99 ms | ratio to plain | CPU µs/req, best round | CPU µs/req over plain, median | RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {med(rows, 'rps'):.0f} | {med(rows, 'p50'):.2f} | {med(rows, 'p99'):.2f} | "
              f"{med(rows, 'ratio'):.2f} | {best(rows, 'cpu_us'):.1f} | {med(rows, 'cpu_over_plain'):+.1f} | {med(rows, 'rss'):.0f} |")
    goals = [("token-exchange, bypass route", "reference: no-op module", 1.03),
             ("token-exchange, bypass route", "reference: no-op module + :path read", None),
             ("token-exchange, route disabled in Envoy", "reference: no-op module", None),
             ("token-exchange, cache hit", "reference: minimal hit module", 1.04),
             ("token-exchange + trusted issuers, hit", "reference: minimal hit module", 1.04),
             ("token-exchange + trusted issuers, hit", "reference: minimal hit module, RS256 token", None),
             ("token-exchange + trusted issuers, policy + claim headers, hit",
              "token-exchange + trusted issuers, hit", 1.05),
             ("token-exchange + introspection, cache hit, introspected token", "token-exchange, cache hit", 1.05),
             ("token-exchange + trusted issuers, hit, every filter_state field",
              "token-exchange + trusted issuers, hit", None),
             ("token-exchange + trusted issuers, DPoP-bound token, hit (ES256 proofs)",
              "token-exchange + trusted issuers, hit", None),
             ("token-exchange + trusted issuers, DPoP-bound token, hit (EdDSA proofs)",
              "token-exchange + trusted issuers, hit", None)]
    for ours, ref, goal in goals:
        if ours in results and ref in results:
            ratio = best(results[ours], "cpu_us") / best(results[ref], "cpu_us")
            label = ref[11:] if ref.startswith("reference: ") else ref
            print(f"- {ours}: front CPU per request {ratio:.2f}x the {label}'s"
                  + (f" (goal <= {goal})" if goal else ""))
    if "ext_authz HTTP authorizer" in results and "token-exchange, cache hit" in results:
        hit = med(results["token-exchange, cache hit"], "rps")
        authz = med(results["ext_authz HTTP authorizer"], "rps")
        print(f"\ncache hit vs ext_authz: {hit / authz:.2f}x")


def footprint(issuers, rs_token):
    """Module size, Envoy's RSS and time from start to ready, per module, at 1 and 2 workers,
    after a second of load that every module must answer with 2xx."""
    opaque = "opaque-bench-token"
    modules = [("plain Envoy", [], None, opaque),
               ("reference: no-op module", [wasm_filter({}, NOOP)], NOOP, opaque),
               ("reference: minimal hit module", [wasm_filter({}, MINIMAL_HIT)], MINIMAL_HIT, opaque),
               ("token-exchange, trusted issuers", [wasm_filter(filter_config("sts_ok", issuers))], WASM, rs_token),
               ("token-exchange without trusted-issuers, private-key-jwt", [wasm_filter(filter_config("sts_ok"), LEAN)],
                LEAN, opaque),
               ("native module, trusted issuers", [native_filter(filter_config("sts_ok", issuers))], NATIVE, rs_token)]
    print("\n| front Envoy | module bytes | RSS MiB, 1 worker | RSS MiB, 2 workers | start to ready s, 1 worker | 2 workers |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, filters, module, token in modules:
        row = []
        for workers in (1, 2):
            rss, ready = [], []
            for attempt in range(3):
                envoy = Envoy(f"footprint-{workers}-{attempt}", front_config(filters), FRONT_ADMIN, concurrency=workers)
                try:
                    load = wrk(["-H", f"authorization: Bearer {token}"], duration=1, connections=4)
                    if load["errors"]:
                        sys.exit(f"{name}: {load['errors']} non-2xx answers:\n" + open(envoy.log).read()[-3000:])
                    rss.append(envoy.rss_mb())
                    ready.append(envoy.ready_s)
                finally:
                    envoy.stop()
            row.append((statistics.median(rss), statistics.median(ready)))
        size = os.path.getsize(module) if module else 0
        print(f"| {name} | {size} | {row[0][0]:.0f} | {row[1][0]:.0f} | {row[0][1]:.2f} | {row[1][1]:.2f} |")


def extra_runs(backend):
    # Miss path: every request a new token; the STS answers after a fixed delay. What the filter
    # adds is the miss latency less the STS's own answer time (plain Envoy to an upstream with the
    # same delay) and less the upstream hop (plain Envoy to the direct upstream), at loads that do
    # not saturate the machine.
    for connections in (1, 8):
        lat = {}
        for name, filters, port, script in [
                ("slow", [], UPSTREAM_SLOW, None),
                ("fast", [], UPSTREAM, None),
                ("miss", [wasm_filter(filter_config("sts_slow"))], UPSTREAM, UNIQUE_TOKENS % f"miss{connections}"),
                ("native miss", [native_filter(filter_config("sts_slow"))], UPSTREAM,
                 UNIQUE_TOKENS % f"nmiss{connections}"),
                ("introspected", [wasm_filter(filter_config("sts_slow", introspecting("introspect_slow")))], UPSTREAM,
                 UNIQUE_TOKENS % f"intro{connections}")]:
            envoy = Envoy(f"miss-{name}", front_config(filters, port), FRONT_ADMIN)
            try:
                lat[name] = wrk([], script, connections=connections, threads=1)
            finally:
                envoy.stop()
        added = {p: lat["miss"][p] - lat["slow"][p] - lat["fast"][p] for p in ("p50", "p99")}
        print(f"\nmiss path, -c{connections} (STS delay {STS_DELAY_MS} ms): p50 {lat['miss']['p50']:.2f} ms, "
              f"p99 {lat['miss']['p99']:.2f} ms; plain Envoy to a {STS_DELAY_MS} ms upstream p50 {lat['slow']['p50']:.2f}, "
              f"p99 {lat['slow']['p99']:.2f}; to the direct upstream p50 {lat['fast']['p50']:.2f}, p99 {lat['fast']['p99']:.2f}; "
              f"added by the filter: p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms")
        native = {p: lat["native miss"][p] - lat["slow"][p] - lat["fast"][p] for p in ("p50", "p99")}
        print(f"native module miss path, -c{connections}: p50 {lat['native miss']['p50']:.2f} ms, "
              f"p99 {lat['native miss']['p99']:.2f} ms; added by the filter: p50 {native['p50']:.2f} ms, "
              f"p99 {native['p99']:.2f} ms")
        more = {p: lat["introspected"][p] - lat["miss"][p] - lat["slow"][p] + lat["fast"][p] for p in ("p50", "p99")}
        print(f"miss path with one introspection, -c{connections} (introspection delay {STS_DELAY_MS} ms too): "
              f"p50 {lat['introspected']['p50']:.2f} ms, p99 {lat['introspected']['p99']:.2f} ms; "
              f"over the miss without it, less the introspection's own {STS_DELAY_MS} ms hop: "
              f"p50 {more['p50']:+.2f} ms, p99 {more['p99']:+.2f} ms")

    # Coalescing: 200 concurrent requests bearing one new token, two workers.
    calls0 = backend.stat("http.sts_coalesce.downstream_rq_total")
    front = Envoy("coalesce", front_config([wasm_filter(filter_config("sts_coalesce"))]), FRONT_ADMIN, concurrency=2)
    try:
        wrk(["-H", "authorization: Bearer one-new-token"], duration=2, connections=200)
    finally:
        front.stop()
    print(f"coalescing: 200 concurrent requests with one new token, --concurrency 2: "
          f"{sts_calls(backend.stat('http.sts_coalesce.downstream_rq_total') - calls0)}")

    # Negative cache: a flood with one token the STS rejects, shorter than negative_ttl_s.
    calls0 = backend.stat("http.sts_reject.downstream_rq_total")
    front = Envoy("negative", front_config([wasm_filter(filter_config("sts_reject"))]), FRONT_ADMIN)
    try:
        stats = wrk(["-H", "authorization: Bearer rejected-token"], duration=2)["total"]
    finally:
        front.stop()
    print(f"negative cache: {stats} requests in 2 s with one rejected token (negative_ttl_s 5): "
          f"{sts_calls(backend.stat('http.sts_reject.downstream_rq_total') - calls0)}")

    # Bounded memory: distinct tokens streamed through, RSS after 10,000 and after all. Each wrk
    # chunk uses its own token prefix, so every request is a new token (a miss and an STS call).
    front = Envoy("memory", front_config([wasm_filter(filter_config("sts_ok"))]), FRONT_ADMIN)
    try:
        chunk, calls = 0, lambda: front.stat("wasmcustom.token_exchange.sts_calls")
        while calls() < 10_000:
            wrk([], UNIQUE_TOKENS % f"warm{chunk}", duration=1)
            chunk += 1
        rss_10k, first = front.rss_mb(), calls()
        start = time.time()
        while calls() < TOKENS:
            wrk([], UNIQUE_TOKENS % f"stream{chunk}", duration=10)
            chunk += 1
        rss_end, exchanged = front.rss_mb(), calls()
    finally:
        front.stop()
    print(f"memory: {exchanged} distinct tokens exchanged ({(exchanged - first) / (time.time() - start):.0f}/s); "
          f"RSS after {first}: {rss_10k:.1f} MiB, after all: {rss_end:.1f} MiB ({(rss_end / rss_10k - 1) * 100:+.1f}%); "
          f"shared data bounded by max_entries = 4096 slots")


def expiry_runs():
    # A hot token across its expiry: the STS mints 3-s tokens (expiry_skew_s 0) after
    # STALL_DELAY_MS; after a first exchange, 12 s of load on one token span four lifetimes. Without refresh-ahead, each
    # expiry makes the requests in flight wait for the STS; with it, the entry is replaced in its
    # last second while it still serves.
    for name, extra in (("without refresh-ahead", {}), ("refresh_ahead_s 1", {"refresh_ahead_s": 1})):
        config = filter_config("sts_short", {"cache": dict({"expiry_skew_s": 0}, **extra)})
        front = Envoy("expiry", front_config([wasm_filter(config)]), FRONT_ADMIN)
        try:
            hot = ["-H", "authorization: Bearer hot-token"]
            wrk(hot, duration=1, connections=1, threads=1)  # the first exchange, outside the run
            calls0 = front.stat("wasmcustom.token_exchange.sts_calls")
            r = wrk(hot, duration=12, connections=8, threads=1)
            time.sleep(0.3)
            calls = front.stat("wasmcustom.token_exchange.sts_calls") - calls0
        finally:
            front.stop()
        print(f"hot token across its expiry, {name} (3-s tokens, STS delay {STALL_DELAY_MS} ms, 12 s at -c8): "
              f"p99 {r['p99']:.2f} ms, max {r['max']:.2f} ms, {r['rps']:.0f} req/s, {sts_calls(calls)}")


if __name__ == "__main__":
    main()
