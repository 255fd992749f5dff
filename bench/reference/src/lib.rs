//! Reference modules for `make bench`. As is: an HTTP filter that lets every request through at
//! once. With `--features path`: the least a bypass rule on a path prefix does: read `:path`
//! and compare it. With `--features hit`: the least a token-exchange cache hit does: read
//! `authorization`, hash it with SHA-256, one shared-data read of the entry (written by the
//! first request), one header write.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request;

impl Context for Request {}

impl HttpContext for Request {
    #[cfg(not(any(feature = "hit", feature = "path")))]
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }

    #[cfg(feature = "path")]
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if path.starts_with('/') {
            return Action::Continue;
        }
        self.send_http_response(404, vec![], None);
        Action::Pause
    }

    #[cfg(feature = "hit")]
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        use sha2::{Digest, Sha256};
        let token = self.get_http_request_header("authorization").unwrap_or_default();
        let key: String = Sha256::digest(token.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let slot = format!("reference.slot.{key}");
        let minted = match self.get_shared_data(&slot) {
            (Some(value), _) => value,
            (None, _) => {
                let value = b"minted-by-reference".to_vec();
                let _ = self.set_shared_data(&slot, Some(&value), None);
                value
            }
        };
        let header = format!("Bearer {}", String::from_utf8_lossy(&minted));
        self.set_http_request_header("authorization", Some(&header));
        Action::Continue
    }
}
