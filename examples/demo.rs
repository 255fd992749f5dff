//! `make run`: a local demo STS on 127.0.0.1:9100 and an echo upstream on 127.0.0.1:9200, then
//! Envoy with `envoy.yaml` in the foreground. Ctrl-C stops all of it. Every port is checked
//! first, and an Envoy that exits before it is ready ends the demo at once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::{start_echo, StsReply, TestSts};

/// The ports `envoy.yaml` and the demo use, and what each is for.
const PORTS: [(u16, &str); 4] = [
    (10000, "Envoy's listener"),
    (9901, "Envoy's admin interface"),
    (9100, "the demo STS"),
    (9200, "the echo upstream"),
];

/// Ends the demo with `why` on stderr.
fn fail(why: &str) -> ! {
    eprintln!("make run: {why}");
    std::process::exit(1);
}

/// Stops the demo if any of its ports is taken, naming the port and the likely cause.
fn check_ports() {
    for (port, what) in PORTS {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            fail(&format!(
                "port {port} on 127.0.0.1 ({what}) is taken ({e}): most likely an earlier \
                 `make run` still running, or another program; `ss -ltnp 'sport = :{port}'` \
                 shows which. Stop it and run again."
            ));
        }
    }
}

/// Waits until Envoy answers ready; ends the demo as soon as Envoy exits or after 30 s.
fn wait_ready(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            fail(&format!(
                "Envoy exited ({status}) before it was ready; its log above says why"
            ));
        }
        if ureq::get("http://127.0.0.1:9901/ready").call().is_ok() {
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            fail("Envoy was not ready within 30 s; its log above says why");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    check_ports();
    let _sts = TestSts::start(9100, |n, call| {
        let aud = call.fields("audience").join("+");
        StsReply::token(&format!("exchanged-for-{aud}-{n}"), 3600)
    });
    start_echo(9200);
    let envoy = support::envoy_binary();
    let mut child = Command::new(&envoy)
        .args(["-c", "envoy.yaml", "--concurrency", "1", "-l", "warn"])
        .env("STS_CLIENT_SECRET", "demo-secret")
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", envoy.display())));
    wait_ready(&mut child);
    println!(
        "\nEnvoy with the token-exchange filter listens on 127.0.0.1:10000 (admin 127.0.0.1:9901).\n\
         The upstream echoes the headers it received. Try:\n\n  \
         curl -s -H 'Authorization: Bearer demo-user-token' http://127.0.0.1:10000/orders/42\n  \
         curl -s -i http://127.0.0.1:10000/orders/42            # no token: 401\n  \
         curl -s 'http://127.0.0.1:9901/stats?filter=token_exchange'\n\n\
         Ctrl-C stops Envoy, the demo STS and the upstream.\n"
    );
    let status = child.wait();
    std::process::exit(status.map_or(1, |s| s.code().unwrap_or(0)));
}
