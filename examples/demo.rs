//! `make run`: a local demo STS on 127.0.0.1:9100 and an echo upstream on 127.0.0.1:9200, then
//! Envoy with `envoy.yaml` in the foreground. Ctrl-C stops all of it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{start_echo, StsReply, TestSts};

fn main() {
    let _sts = TestSts::start(9100, |n, call| {
        let aud = call.fields("audience").join("+");
        StsReply::token(&format!("exchanged-for-{aud}-{n}"), 3600)
    });
    start_echo(9200);
    let envoy = support::envoy_binary();
    let mut child = match Command::new(&envoy)
        .args(["-c", "envoy.yaml", "--concurrency", "1", "-l", "warn"])
        .env("STS_CLIENT_SECRET", "demo-secret")
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", envoy.display());
            std::process::exit(1);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ureq::get("http://127.0.0.1:9901/ready").call().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
