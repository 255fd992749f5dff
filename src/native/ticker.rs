//! The tick: a thread of the module's own posts an event to the main thread every
//! [`TICK_MS`], where the configuration's scheduled hook runs the engine's tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::envoy::{ConfigPtr, SchedulerPtr};

/// How often (ms) the engine's tick runs on the main thread.
pub const TICK_MS: u64 = 100;

/// The thread that posts the tick to the main thread, and how to stop it.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    scheduler: SchedulerPtr,
}

/// Posts a tick to the main thread every [`TICK_MS`] until stopped.
pub fn start(envoy: ConfigPtr) -> Ticker {
    let scheduler = envoy.scheduler();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let post = scheduler;
    let thread = std::thread::Builder::new()
        .name("token-exchange-tick".into())
        .spawn(move || {
            let post = post;
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(TICK_MS));
                if !flag.load(Ordering::Acquire) {
                    post.commit_config(0);
                }
            }
        })
        .ok();
    Ticker {
        stop,
        thread,
        scheduler,
    }
}

impl Ticker {
    /// Stops the thread, waits for it, and deletes the scheduler (main thread).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.scheduler.delete_config();
    }
}
