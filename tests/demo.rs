//! `make run` fails fast and says why: a taken port is named before anything starts, and an
//! Envoy that exits before it is ready ends the demo at once. (The demo's happy path is what
//! `make run` shows; the shipped `envoy.yaml` is tested in `e2e`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs the demo `make e2e` builds with `envoy` as its Envoy; its output and how long it ran.
fn demo(envoy: &str) -> (Output, Duration) {
    let binary = support::repo().join("target/debug/examples/demo");
    support::require(&binary, "`make e2e` builds it (cargo build --example demo)");
    let started = Instant::now();
    let out = Command::new(binary)
        .current_dir(support::repo())
        .env("ENVOY", envoy)
        .output()
        .expect("the demo runs");
    (out, started.elapsed())
}

#[test]
fn make_run_names_a_taken_port_and_stops_when_envoy_dies() {
    let held = TcpListener::bind(("127.0.0.1", 9100)).expect("port 9100 is free for the test");
    let (out, took) = demo(&support::envoy_binary().display().to_string());
    drop(held);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        said.contains("port 9100 on 127.0.0.1 (the demo STS) is taken"),
        "{said}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Try:"));

    // An Envoy that cannot start (here: one that exits at once) ends the demo within seconds.
    let (out, took) = demo("false");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(said.contains("Envoy exited"), "{said}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Try:"));
}
