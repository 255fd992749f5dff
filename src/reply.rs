//! The error table: every local answer the filter sends, with its status, challenge and JSON body.
//! Bodies never carry a token.

/// The challenges a binding refusal carries (RFC 9449 §7.1).
#[derive(Debug, Clone, Copy)]
pub struct Schemes<'a> {
    /// The request used the `DPoP` scheme.
    pub used_dpop: bool,
    /// The route takes both schemes (DPoP is not required there).
    pub both: bool,
    /// The accepted proof algorithms, space-separated.
    pub algs: &'a str,
}

/// A response the filter sends instead of routing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u32,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// JSON body `{"error": …, "error_description": …}`.
    pub body: String,
    /// The `error` code of the body (empty for an answer that is not an error).
    pub error: &'static str,
    /// Fields of the decision left in the request's filter state before the answer goes out
    /// (`output.filter_state`).
    pub state: Vec<(&'static str, String)>,
}

impl LocalReply {
    fn new(status: u32, error: &'static str, description: &str) -> Self {
        let body = serde_json::json!({ "error": error, "error_description": description });
        LocalReply {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: body.to_string(),
            error,
            state: Vec::new(),
        }
    }

    fn with(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// 401 for a request without a token: a bare challenge (RFC 6750 §3.1).
    pub fn missing_token(realm: &str) -> Self {
        Self::new(401, "unauthorized", "a bearer token is required")
            .with("www-authenticate", format!("Bearer realm=\"{realm}\""))
    }

    /// 401 for a token that was sent but cannot be used.
    pub fn invalid_token(realm: &str, description: &str) -> Self {
        Self::new(401, "invalid_token", description).with(
            "www-authenticate",
            format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""),
        )
    }

    /// 401 for a refusal about a token's binding or its DPoP proof (RFC 9449 §7.1): `error`
    /// (`invalid_dpop_proof` or `invalid_token`) in the challenge of the scheme the request used
    /// (`DPoP` names the accepted `algs`), and the other scheme's bare challenge when the route
    /// takes both; a route that takes DPoP only challenges with `DPoP` alone.
    pub fn unbound(
        realm: &str,
        error: &'static str,
        description: &str,
        schemes: Schemes<'_>,
    ) -> Self {
        let algs = schemes.algs;
        let dpop = format!("DPoP realm=\"{realm}\", algs=\"{algs}\"");
        let bearer = format!("Bearer realm=\"{realm}\"");
        let detail = format!(", error=\"{error}\", error_description=\"{description}\"");
        let reply = Self::new(401, error, description);
        match (schemes.used_dpop, schemes.both) {
            // A route that takes DPoP only challenges with DPoP only.
            (_, false) => reply.with("www-authenticate", dpop + &detail),
            (true, true) => reply
                .with("www-authenticate", dpop + &detail)
                .with("www-authenticate", bearer),
            (false, true) => reply
                .with("www-authenticate", bearer + &detail)
                .with("www-authenticate", dpop),
        }
    }

    /// 401 when the token service asks the user to act first: its error code, or Entra's
    /// claims challenge (`insufficient_claims` with the base64 `claims`). The service's own
    /// description is never echoed.
    pub fn interaction(realm: &str, code: &'static str, claims: Option<&str>) -> Self {
        let description = "the user must act at the identity provider before this request";
        let challenge = match claims {
            Some(c) => format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_claims\", error_description=\"{description}\", claims=\"{c}\""
            ),
            None => format!(
                "Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{description}\""
            ),
        };
        let error = if claims.is_some() {
            "insufficient_claims"
        } else {
            code
        };
        Self::new(401, error, description).with("www-authenticate", challenge)
    }

    /// 401 for a verified token whose authentication is not strong or fresh enough for the
    /// route (RFC 9470 §3): the `acr_values` and `max_age` that would do, each when asked for.
    pub fn step_up(realm: &str, acr_values: Option<&str>, max_age: Option<u64>) -> Self {
        let description = "a stronger or more recent authentication is required";
        let mut challenge = format!(
            "Bearer realm=\"{realm}\", error=\"insufficient_user_authentication\", error_description=\"{description}\""
        );
        if let Some(a) = acr_values {
            challenge.push_str(&format!(", acr_values=\"{a}\""));
        }
        if let Some(m) = max_age {
            challenge.push_str(&format!(", max_age={m}"));
        }
        Self::new(401, "insufficient_user_authentication", description)
            .with("www-authenticate", challenge)
    }

    /// 401 for a request without a token on a route that takes DPoP-bound tokens only.
    pub fn missing_dpop_token(realm: &str, algs: &str) -> Self {
        Self::new(401, "unauthorized", "a DPoP-bound token is required").with(
            "www-authenticate",
            format!("DPoP realm=\"{realm}\", algs=\"{algs}\""),
        )
    }

    /// 403 for an exchange the STS refuses for this audience, resource, scope or client.
    pub fn forbidden(realm: &str, description: &str) -> Self {
        Self::new(403, "insufficient_scope", description).with(
            "www-authenticate",
            format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\""),
        )
    }

    /// 403 for a token that fails the route's access policy (RFC 6750 §3.1), naming the
    /// `scope` that would do, when known.
    pub fn insufficient_scope(realm: &str, description: &str, scope: Option<&str>) -> Self {
        let scope = scope.map_or_else(String::new, |s| format!(", scope=\"{s}\""));
        Self::new(403, "insufficient_scope", description).with(
            "www-authenticate",
            format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\"{scope}"),
        )
    }

    /// 400 for a request the filter cannot place: its path reads as two different routes.
    pub fn ambiguous_path() -> Self {
        Self::new(
            400,
            "invalid_request",
            "the request path can be read as more than one route",
        )
    }

    /// 502 when the STS rejects the filter's own credentials or answers nonsense.
    pub fn bad_gateway(description: &str) -> Self {
        Self::new(502, "bad_gateway", description)
    }

    /// 503 when the STS cannot be used right now.
    pub fn unavailable(description: &str) -> Self {
        Self::new(503, "temporarily_unavailable", description).with("retry-after", "1".into())
    }

    /// 503 while the user has not answered a consent request yet: retry after `seconds`.
    pub fn consent_pending(seconds: u64) -> Self {
        Self::new(
            503,
            "temporarily_unavailable",
            "waiting for the user's consent on their other device",
        )
        .with("retry-after", seconds.max(1).to_string())
    }

    /// The answer to the STS's CIBA notification: 204 for a pending consent's token, 401 for any
    /// other (no body either way).
    pub fn notification(accepted: bool) -> Self {
        LocalReply {
            status: if accepted { 204 } else { 401 },
            headers: vec![("cache-control".into(), "no-store".into())],
            body: String::new(),
            error: "",
            state: Vec::new(),
        }
    }

    /// RFC 9728 protected resource metadata, answered by the filter.
    pub fn metadata(document: &str) -> Self {
        LocalReply {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "max-age=300".into()),
            ],
            body: document.to_string(),
            error: "",
            state: Vec::new(),
        }
    }

    /// 405 for a method other than `GET` at the metadata path.
    pub fn method_not_allowed() -> Self {
        Self::new(405, "invalid_request", "only GET is answered here").with("allow", "GET".into())
    }

    /// A 401's or 403's challenge names the resource's metadata (RFC 9728 §5.1; MCP clients
    /// step up their scopes from it); other answers are left as they are.
    pub fn advertise(&mut self, metadata_url: &str) {
        if self.status != 401 && self.status != 403 {
            return;
        }
        for (name, value) in &mut self.headers {
            if name == "www-authenticate" {
                value.push_str(&format!(", resource_metadata=\"{metadata_url}\""));
            }
        }
    }

    /// The value of a header, for tests and logs.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &LocalReply) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        let r = LocalReply::missing_token("edge");
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"edge\""));
        assert_eq!(body(&r)["error"], "unauthorized");
    }

    #[test]
    fn invalid_token_challenge_names_the_reason() {
        let r = LocalReply::invalid_token("edge", "token too large");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"edge\", error=\"invalid_token\", error_description=\"token too large\"")
        );
        assert_eq!(body(&r)["error_description"], "token too large");
    }

    #[test]
    fn statuses_of_the_error_table() {
        let f = LocalReply::forbidden("edge", "no");
        assert_eq!(
            (f.status, body(&f)["error"].as_str()),
            (403, Some("insufficient_scope"))
        );
        assert!(f
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope"));
        let p = LocalReply::insufficient_scope("edge", "no", Some("a b"));
        assert_eq!(
            (p.status, p.header("www-authenticate")),
            (
                403,
                Some("Bearer realm=\"edge\", error=\"insufficient_scope\", scope=\"a b\"")
            )
        );
        let p = LocalReply::insufficient_scope("edge", "no", None);
        assert!(!p.header("www-authenticate").unwrap().contains("scope="));
        let b = LocalReply::bad_gateway("x");
        assert_eq!(b.status, 502);
        assert_eq!(b.header("www-authenticate"), None);
        let u = LocalReply::unavailable("x");
        assert_eq!(u.status, 503);
        assert_eq!(u.header("retry-after"), Some("1"));
        assert_eq!(u.header("content-type"), Some("application/json"));
    }
}
