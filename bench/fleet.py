#!/usr/bin/env python3
"""`make fleet`: the STS load a fleet of proxies puts on one STS, measured against the model.

Everything listens on 127.0.0.1. One test STS (counting calls) serves N front Envoys, each with
the filter and `--concurrency 2`, whose route answers directly (no upstream). A load generator
sends Poisson arrivals at a fixed total rate; each request names a user drawn from a Zipf
distribution and one of two routes (two audiences), and goes to a proxy picked at random.

The model: a key (user, route) whose requests reach one proxy as a Poisson stream of rate m is
fetched once, then served from that proxy's shared cache for T = lifetime - expiry_skew_s, then
fetched again at its next request. So each proxy makes m / (1 + m T) calls per second for it, and
the fleet N * sum over keys of m / (1 + m T), with m = (rate of the key) / N.

With affinity (the last row), an edge Envoy in front of the largest fleet hashes each request's
`authorization` header onto a ring of the proxies (`ring_hash`), so each user's requests reach one
proxy: the fleet then makes the calls of a single proxy, sum over keys of m / (1 + m T) with m the
key's whole rate.

Prints measured and predicted STS calls per second per fleet size and writes an SVG chart.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("ENVOY", os.path.join(ROOT, ".venv/bin/envoy"))
WASM = os.path.join(ROOT, "target/wasm32-wasip1/release/token_exchange_wasm.wasm")
RATE = float(os.environ.get("FLEET_RATE", "150"))            # requests per second, whole fleet
USERS = int(os.environ.get("FLEET_USERS", "1000"))
ZIPF_S = float(os.environ.get("FLEET_ZIPF", "1.1"))
LIFETIME_S = int(os.environ.get("FLEET_LIFETIME_S", "12"))  # expires_in the STS answers
SKEW_S = 2
SECONDS = int(os.environ.get("FLEET_SECONDS", "40"))         # per fleet size; the first T are warm-up
SIZES = [int(n) for n in os.environ.get("FLEET_SIZES", "1,2,4").split(",")]
CHART = os.environ.get("FLEET_CHART", os.path.join(ROOT, "bench/fleet.svg"))
ROUTES = [("/orders", 0.7), ("/billing", 0.3)]
BASE_PORT, ADMIN_BASE, STS_PORT = 18100, 18200, 18099
EDGE_PORT, EDGE_ADMIN = 18098, 18097
TMP = tempfile.mkdtemp(prefix="txw-fleet-")


class Sts(BaseHTTPRequestHandler):
    """Answers every exchange with a token of LIFETIME_S seconds and records when."""
    calls = []
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Sts.lock:
            Sts.calls.append(time.time())
            n = len(Sts.calls)
        body = json.dumps({"access_token": f"fleet-{n}", "token_type": "Bearer", "expires_in": LIFETIME_S,
                           "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def envoy_config(port, admin):
    filter_config = {
        "sts": {"cluster": "sts", "authority": "sts.fleet", "token_path": "/token", "client_id": "fleet",
                "client_secret": "fleet-secret"},
        "exchange": {"audience": ["orders"]},
        "routes": [{"match": {"path_prefix": "/billing"}, "exchange": {"audience": ["billing"]}}],
        "cache": {"expiry_skew_s": SKEW_S},
    }
    wasm = {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "token_exchange",
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": json.dumps(filter_config)},
                   "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": WASM}}}}}}
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "fleet",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": [wasm, router]}}
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    return {"admin": {"address": addr(admin)}, "static_resources": {
        "listeners": [{"name": "front", "address": addr(port), "filter_chains": [{"filters": [hcm]}]}],
        "clusters": [{"name": "sts", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "sts", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(STS_PORT)}}]}]}}]}}


def edge_config(front_ports):
    """An Envoy without the filter that sends each request to the proxy its `authorization`
    header hashes to on a ring of the `front_ports` (user affinity)."""
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    route = {"match": {"prefix": "/"}, "route": {
        "cluster": "fleet", "hash_policy": [{"header": {"header_name": "authorization"}}]}}
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "edge",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [router]}}
    endpoints = [{"endpoint": {"address": addr(p)}} for p in front_ports]
    return {"admin": {"address": addr(EDGE_ADMIN)}, "static_resources": {
        "listeners": [{"name": "edge", "address": addr(EDGE_PORT), "filter_chains": [{"filters": [hcm]}]}],
        "clusters": [{"name": "fleet", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "RING_HASH",
                      "load_assignment": {"cluster_name": "fleet", "endpoints": [{"lb_endpoints": endpoints}]}}]}}


def start_envoy(i, config=None, port=None, admin=None):
    port, admin = port or BASE_PORT + i, admin or ADMIN_BASE + i
    path = os.path.join(TMP, f"envoy-{i}.json")
    with open(path, "w") as f:
        json.dump(config or envoy_config(port, admin), f)
    log = os.path.join(TMP, f"envoy-{i}.log")
    proc = subprocess.Popen([ENVOY, "-c", path, "--concurrency", "2", "--disable-hot-restart", "-l", "warn",
                             "--log-path", log],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"envoy {i} exited:\n" + open(log).read())
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"envoy {i} not ready:\n" + open(log).read())


def zipf_weights():
    w = [1.0 / (k ** ZIPF_S) for k in range(1, USERS + 1)]
    total = sum(w)
    return [x / total for x in w]


def predicted(n_proxies, weights, affinity=False):
    """Fleet STS calls per second by the model; with affinity each key reaches one proxy."""
    t = LIFETIME_S - SKEW_S
    spread = 1 if affinity else n_proxies
    calls = 0.0
    for q in weights:
        for _, share in ROUTES:
            m = RATE * q * share / spread
            calls += spread * m / (1 + m * t)
    return calls


def load(ports, weights, seconds, errors):
    """Poisson arrivals at RATE for `seconds` from a few threads, each with its own connections."""
    threads = 6
    stop = time.time() + seconds
    users = list(range(USERS))
    paths = [p for p, _ in ROUTES]
    shares = [s for _, s in ROUTES]

    def run(seed):
        rnd = random.Random(seed)
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=5) for p in ports}
        next_at = time.time()
        while True:
            next_at += rnd.expovariate(RATE / threads)
            if next_at >= stop:
                break
            time.sleep(max(0.0, next_at - time.time()))
            user = rnd.choices(users, weights)[0]
            path = rnd.choices(paths, shares)[0]
            port = rnd.choice(ports)
            try:
                c = conns[port]
                c.request("GET", path, headers={"authorization": f"Bearer user-{user}"})
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(r.status)
            except (OSError, http.client.HTTPException):
                conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                errors.append("connection")

    workers = [threading.Thread(target=run, args=(s,)) for s in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def chart(rows):
    """Measured against predicted STS calls per second, one pair of bars per fleet size."""
    width, height, pad = 700, 300, 50
    top = max(max(m, p) for _, m, p in rows) * 1.3 or 1
    bar, gap = 46, 34
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">STS calls per second: measured vs model</text>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - 20}" y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="30" x2="{pad}" y2="{height - pad}" stroke="black"/>']
    for i in range(5):
        v = top * i / 4
        y = height - pad - (height - pad - 30) * i / 4
        out.append(f'<text x="{pad - 6}" y="{y + 4:.0f}" text-anchor="end">{v:.1f}</text>')
        out.append(f'<line x1="{pad}" y1="{y:.0f}" x2="{width - 20}" y2="{y:.0f}" stroke="#ddd"/>')
    for i, (label, measured, model) in enumerate(rows):
        x = pad + gap + i * (2 * bar + gap * 2)
        for j, (v, color) in enumerate(((measured, "#3b75af"), (model, "#ef8636"))):
            h = (height - pad - 30) * v / top
            out.append(f'<rect x="{x + j * bar}" y="{height - pad - h:.1f}" width="{bar - 4}" height="{h:.1f}" fill="{color}"/>')
            out.append(f'<text x="{x + j * bar + bar / 2 - 2}" y="{height - pad - h - 4:.1f}" text-anchor="middle">{v:.2f}</text>')
        out.append(f'<text x="{x + bar}" y="{height - pad + 18}" text-anchor="middle">{label}</text>')
    lx = pad + 12
    out.append(f'<rect x="{lx}" y="36" width="12" height="12" fill="#3b75af"/><text x="{lx + 18}" y="46">measured</text>')
    out.append(f'<rect x="{lx}" y="54" width="12" height="12" fill="#ef8636"/><text x="{lx + 18}" y="64">model</text>')
    out.append(f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">{RATE:.0f} req/s, {USERS} users (Zipf {ZIPF_S}), '
               f'2 routes, token lifetime {LIFETIME_S} s, skew {SKEW_S} s</text>')
    out.append("</svg>")
    with open(CHART, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if not os.path.exists(WASM):
        sys.exit(f"{WASM} is missing: run `make build`")
    server = ThreadingHTTPServer(("127.0.0.1", STS_PORT), Sts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    weights = zipf_weights()
    warm = LIFETIME_S - SKEW_S
    rows = []
    runs = [(n, False) for n in SIZES] + [(max(SIZES), True)]
    try:
        for n, affinity in runs:
            envoys = [start_envoy(i) for i in range(n)]
            fronts = [port for _, port in envoys]
            if affinity:
                envoys.append(start_envoy(n, edge_config(fronts), EDGE_PORT, EDGE_ADMIN))
            label = f"{n} prox{'y' if n == 1 else 'ies'}" + (", ring_hash" if affinity else "")
            try:
                Sts.calls.clear()
                errors = []
                begin = time.time()
                load([EDGE_PORT] if affinity else fronts, weights, SECONDS, errors)
                end = time.time()
                if errors:
                    sys.exit(f"{len(errors)} failed requests with {label}: {errors[:5]}")
                window = [t for t in Sts.calls if t >= begin + warm]
                measured = len(window) / (end - begin - warm)
                model = predicted(n, weights, affinity)
                rows.append((label, measured, model))
                print(f"{label} (x 2 workers): measured {measured:.2f} STS calls/s, model {model:.2f} "
                      f"({measured / model:.2f}x)", flush=True)
            finally:
                for proc, _ in envoys:
                    proc.terminate()
                    proc.wait()
    finally:
        server.shutdown()
    chart(rows)
    print(f"\nchart: {os.path.relpath(CHART, ROOT)}")
    print("| proxies (x 2 workers) | measured STS calls/s | model | measured / model |")
    print("|---|---:|---:|---:|")
    for label, measured, model in rows:
        print(f"| {label} | {measured:.2f} | {model:.2f} | {measured / model:.2f} |")
    spread = next(r[1] for r, (n, a) in zip(rows, runs) if n == max(SIZES) and not a)
    hashed = rows[-1][1]
    print(f"\naffinity: {spread:.2f} -> {hashed:.2f} STS calls/s with {max(SIZES)} proxies "
          f"({1 - hashed / spread:.0%} fewer)")


if __name__ == "__main__":
    main()
