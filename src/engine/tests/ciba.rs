//! CIBA consents: one prompt polled until approved, denial and lapse, `wait_s`, ping, one
//! prompt across workers, an STS that is down, one prompt per user by claim.

mod tests {
    use super::tests_support::*;
    use crate::metrics::Metric;

    #[test]
    fn one_prompt_polled_until_approved_then_every_waiter_goes_on() {
        let h = FakeHost::at(NOW);
        let mut e = poll_engine();
        assert_eq!(ask(&mut e, &h, 1, "user-tok"), Verdict::Pause);
        assert_eq!(
            ask(&mut e, &h, 2, "user-tok"),
            Verdict::Pause,
            "joins the consent"
        );
        assert!(tick(&mut e, &h, 0).is_empty(), "the root sends the request");
        let calls = h.calls_to("sts");
        assert_eq!(calls.len(), 1, "one backchannel request");
        let bc = &calls[0].1;
        assert_eq!(path(bc), "/bc");
        assert_eq!(field(bc, "login_hint_token").as_deref(), Some("user-tok"));
        assert_eq!(field(bc, "scope").as_deref(), Some("openid orders"));
        assert_eq!(field(bc, "grant_type"), None);
        assert!(bc
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.starts_with("Basic ")));
        assert!(e
            .on_http_answer(&h, Some(1), calls[0].0, &backchannel(120, 2))
            .is_empty());

        assert!(tick(&mut e, &h, 1_000).is_empty());
        assert_eq!(h.calls_to("sts").len(), 1, "not before the interval");
        tick(&mut e, &h, 1_000);
        let poll = h.calls_to("sts")[1].clone();
        assert_eq!(path(&poll.1), "/token");
        assert_eq!(
            field(&poll.1, "grant_type").as_deref(),
            Some("urn:openid:params:grant-type:ciba")
        );
        assert_eq!(field(&poll.1, "auth_req_id").as_deref(), Some("req-1"));
        assert!(e
            .on_http_answer(&h, None, poll.0, &error("authorization_pending"))
            .is_empty());
        tick(&mut e, &h, 2_000);
        let poll = h.calls_to("sts")[2].clone();
        assert!(e
            .on_http_answer(&h, None, poll.0, &error("slow_down"))
            .is_empty());
        tick(&mut e, &h, 2_000);
        assert_eq!(h.calls_to("sts").len(), 3, "slow_down adds 5 s");
        tick(&mut e, &h, 5_000);
        let poll = h.calls_to("sts")[3].clone();
        let out = e.on_http_answer(&h, None, poll.0, &token("consented"));
        assert_eq!(out.len(), 2);
        for (_, v) in &out {
            assert_eq!(minted(v).as_deref(), Some("Bearer consented"));
        }
        // Later requests are served from the cache: the user is not asked again.
        assert_eq!(
            minted(&ask(&mut e, &h, 3, "user-tok")).as_deref(),
            Some("Bearer consented")
        );
        assert_eq!(h.calls_to("sts").len(), 4);
        assert_eq!(h.metric_value(Metric::CibaRequests), 1);
        assert_eq!(h.metric_value(Metric::CibaPolls), 3);
        assert_eq!(h.metric_value(Metric::CibaApproved), 1);
        // Log lines never carry the token or the auth_req_id.
        for (_, line) in h.logs.borrow().iter() {
            assert!(
                !line.contains("user-tok")
                    && !line.contains("req-1")
                    && !line.contains("consented"),
                "{line}"
            );
        }
    }

    #[test]
    fn denied_and_expired_consents_answer_403_and_are_remembered() {
        for (end, metric) in [
            ("access_denied", Metric::CibaDenied),
            ("expired_token", Metric::CibaExpired),
        ] {
            let h = FakeHost::at(NOW);
            let mut e = poll_engine();
            ask(&mut e, &h, 1, "t");
            tick(&mut e, &h, 0);
            e.on_http_answer(&h, None, h.last_call(), &backchannel(60, 1));
            tick(&mut e, &h, 1_000);
            let out = e.on_http_answer(&h, None, h.last_call(), &error(end));
            assert_eq!(status(&out[0].1), 403, "{end}");
            assert_eq!(h.metric_value(metric), 1);
            // Within negative_ttl_s the user is not prompted again.
            assert_eq!(status(&ask(&mut e, &h, 2, "t")), 403);
            assert_eq!(h.calls_to("sts").len(), 2);
            h.advance_ms(5_000);
            assert_eq!(ask(&mut e, &h, 3, "t"), Verdict::Pause, "asked again later");
            tick(&mut e, &h, 0);
            assert_eq!(h.calls_to("sts").len(), 3);
        }
    }

    #[test]
    fn a_consent_that_lapses_unanswered_is_expired() {
        let h = FakeHost::at(NOW);
        let mut e = poll_engine();
        ask(&mut e, &h, 1, "t");
        tick(&mut e, &h, 0);
        e.on_http_answer(&h, None, h.last_call(), &backchannel(3, 5));
        let out = tick(&mut e, &h, 3_000);
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0].1), 403);
        assert_eq!(h.metric_value(Metric::CibaExpired), 1);
        assert_eq!(h.calls_to("sts").len(), 1, "no poll after the lapse");
    }

    #[test]
    fn a_request_waits_at_most_wait_s_and_the_consent_goes_on() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"login_hint":"login_hint_token","wait_s":2}),
            json!({}),
        );
        ask(&mut e, &h, 1, "t");
        tick(&mut e, &h, 0);
        e.on_http_answer(&h, None, h.last_call(), &backchannel(120, 5));
        let out = tick(&mut e, &h, 2_000);
        assert_eq!(out.len(), 1);
        let Verdict::Respond(r) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!((r.status, r.header("retry-after")), (503, Some("2")));
        e.on_request_done(1);
        // The retry joins the same consent: no second prompt.
        h.advance_ms(2_500);
        assert_eq!(ask(&mut e, &h, 2, "t"), Verdict::Pause);
        tick(&mut e, &h, 500);
        let polls = h.calls_to("sts");
        assert_eq!(polls.len(), 2, "backchannel + one poll");
        let out = e.on_http_answer(&h, None, polls[1].0, &token("late"));
        assert_eq!(out[0].0, 2);
        assert_eq!(minted(&out[0].1).as_deref(), Some("Bearer late"));
    }

    #[test]
    fn ping_answers_only_its_own_token_and_polls_at_once() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"mode":"ping","notify_path":"/ciba/notify","login_hint":"id_token_hint"}),
            json!({}),
        );
        ask(&mut e, &h, 1, "t");
        tick(&mut e, &h, 0);
        let bc = h.calls_to("sts")[0].1.clone();
        assert_eq!(field(&bc, "id_token_hint").as_deref(), Some("t"));
        let notify_token = field(&bc, "client_notification_token").unwrap();
        let (_, random) = notify_token.split_once('.').unwrap();
        assert!(random.len() >= 32, "at least 128 random bits");
        e.on_http_answer(&h, Some(1), h.last_call(), &backchannel(120, 30));
        let ping = |e: &mut Engine, method: &str, token: &str| {
            let auth = format!("Bearer {token}");
            let req = [
                (":path", "/ciba/notify"),
                (":method", method),
                ("authorization", auth.as_str()),
            ];
            status(&e.on_request(&h, 9, &req[..]))
        };
        assert_eq!(ping(&mut e, "POST", "0.0000"), 401);
        assert_eq!(ping(&mut e, "POST", &format!("{notify_token}x")), 401);
        assert_eq!(ping(&mut e, "GET", &notify_token), 401);
        assert_eq!(h.calls_to("sts").len(), 1, "a wrong ping changes nothing");
        assert_eq!(ping(&mut e, "POST", &notify_token), 204);
        tick(&mut e, &h, 100);
        assert_eq!(
            h.calls_to("sts").len(),
            2,
            "polled at once, long before the interval"
        );
        let out = e.on_http_answer(&h, None, h.last_call(), &token("pinged"));
        assert_eq!(minted(&out[0].1).as_deref(), Some("Bearer pinged"));
        assert_eq!(
            ping(&mut e, "POST", &notify_token),
            401,
            "the consent is over"
        );
    }

    #[test]
    fn workers_share_one_prompt_through_shared_data() {
        let h = FakeHost::at(NOW);
        let mut a = poll_engine();
        let mut b = poll_engine();
        assert_eq!(ask(&mut a, &h, 1, "t"), Verdict::Pause);
        assert_eq!(ask(&mut b, &h, 2, "t"), Verdict::Pause);
        tick(&mut a, &h, 0);
        tick(&mut b, &h, 0);
        assert_eq!(
            h.calls_to("sts").len(),
            1,
            "the other worker never asks the user"
        );
        a.on_http_answer(&h, Some(1), h.last_call(), &backchannel(120, 1));
        tick(&mut a, &h, 1_000);
        assert!(b.on_tick(&h).is_empty(), "b only waits");
        assert_eq!(h.calls_to("sts").len(), 2, "only the owner polls");
        let out = a.on_http_answer(&h, None, h.last_call(), &token("shared"));
        assert_eq!(out[0].0, 1);
        let out = tick(&mut b, &h, 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2);
        assert_eq!(minted(&out[0].1).as_deref(), Some("Bearer shared"));
    }

    #[test]
    fn an_sts_that_is_down_answers_503_and_frees_the_claim() {
        let h = FakeHost::at(NOW);
        let mut e = poll_engine();
        ask(&mut e, &h, 1, "t");
        tick(&mut e, &h, 0);
        let down = super::super::no_answer();
        let out = e.on_http_answer(&h, None, h.last_call(), &down);
        assert_eq!(status(&out[0].1), 503);
        assert_eq!(ask(&mut e, &h, 2, "t"), Verdict::Pause);
        tick(&mut e, &h, 0);
        assert_eq!(h.calls_to("sts").len(), 2, "asked again");
        h.refuse_dispatch.set(true);
        let mut f = poll_engine();
        assert_eq!(ask(&mut f, &h, 3, "other"), Verdict::Pause);
        let out = tick(&mut f, &h, 0);
        assert_eq!((out[0].0, status(&out[0].1)), (3, 503));
        assert_eq!(h.metric_value(crate::metrics::Metric::StsErrors), 1);
        // The claim is free again: the next request asks anew.
        h.refuse_dispatch.set(false);
        assert_eq!(ask(&mut f, &h, 4, "other"), Verdict::Pause);
        tick(&mut f, &h, 0);
        assert_eq!(h.calls_to("sts").len(), 3);
    }
}

mod by_claim {
    use super::tests_support::*;
    use crate::jwks::tests::TestKeys;

    #[test]
    fn one_prompt_per_user_whatever_token_they_bring() {
        let keys = TestKeys::new();
        let issuers =
            json!([{ "issuer": "https://idp", "algorithms": ["ES256"], "jwks": keys.jwks() }]);
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({ "login_hint": "email" }),
            json!({ "trusted_issuers": issuers }),
        );
        let token = |n: u64| {
            let claims = serde_json::json!({"iss": "https://idp", "sub": "u1", "email": "alice@example.com",
                "exp": NOW / 1000 + 600 + n});
            keys.sign("ES256", Some("ec"), &claims)
        };
        assert_eq!(ask(&mut e, &h, 1, &token(1)), Verdict::Pause);
        assert_eq!(ask(&mut e, &h, 2, &token(2)), Verdict::Pause);
        tick(&mut e, &h, 0);
        let calls = h.calls_to("sts");
        assert_eq!(calls.len(), 1, "one prompt for two tokens of one user");
        assert_eq!(
            field(&calls[0].1, "login_hint").as_deref(),
            Some("alice@example.com")
        );
        let unsigned = "eyJhbGciOiJFUzI1NiJ9.eyJlbWFpbCI6Im1hbGxvcnkifQ.c2ln";
        assert_eq!(
            status(&ask(&mut e, &h, 3, unsigned)),
            401,
            "the user comes from a verified token"
        );
        let no_claim = keys.sign(
            "ES256",
            Some("ec"),
            &serde_json::json!({"iss": "https://idp", "sub": "u2", "exp": NOW / 1000 + 600}),
        );
        assert_eq!(status(&ask(&mut e, &h, 4, &no_claim)), 401);
        assert_eq!(h.calls_to("sts").len(), 1);
    }
}

/// Helpers of the CIBA engine tests.
pub(super) mod tests_support {
    pub(in crate::engine) use crate::config::Config;
    pub(in crate::engine) use crate::engine::Engine;
    pub(in crate::engine) use crate::host::{FakeHost, HttpAnswer, HttpCall};
    pub(in crate::engine) use crate::verdict::{HeaderOp, Verdict};
    pub(in crate::engine) use serde_json::json;

    pub(in crate::engine) const NOW: u64 = 1_700_000_000_000;

    /// A CIBA engine: `ciba` adds to `sts.ciba`, `extra` to the top level (its `sts` keys to
    /// `sts`).
    pub(in crate::engine) fn engine(ciba: serde_json::Value, extra: serde_json::Value) -> Engine {
        let mut config = json!({
            "sts": { "cluster": "sts", "authority": "sts.local", "token_path": "/token",
                     "client_id": "edge", "client_secret": "pw", "ciba": { "path": "/bc" } },
            "exchange": { "grant": "ciba", "scope": "openid orders" }
        });
        for (k, v) in ciba.as_object().expect("an object") {
            config["sts"]["ciba"][k] = v.clone();
        }
        for (k, v) in extra.as_object().expect("an object") {
            match (k.as_str(), v.as_object()) {
                ("sts", Some(sts)) => sts.iter().for_each(|(k, v)| config["sts"][k] = v.clone()),
                _ => config[k] = v.clone(),
            }
        }
        let bytes = config.to_string().into_bytes();
        Engine::new(Config::parse(&bytes, &|_| None).unwrap()).unwrap()
    }

    pub(in crate::engine) fn poll_engine() -> Engine {
        engine(
            json!({"login_hint":"login_hint_token","wait_s":60}),
            json!({}),
        )
    }

    pub(in crate::engine) fn ask(e: &mut Engine, h: &FakeHost, ctx: u32, token: &str) -> Verdict {
        let auth = format!("Bearer {token}");
        e.on_request(
            h,
            ctx,
            &[(":path", "/orders"), ("authorization", auth.as_str())][..],
        )
    }

    pub(in crate::engine) fn answer(status: u16, body: serde_json::Value) -> HttpAnswer {
        HttpAnswer {
            status: Some(status),
            body: body.to_string().into_bytes(),
            too_large: false,
        }
    }

    pub(in crate::engine) fn backchannel(expires_in: u64, interval: u64) -> HttpAnswer {
        answer(
            200,
            serde_json::json!({"auth_req_id": "req-1", "expires_in": expires_in, "interval": interval}),
        )
    }

    pub(in crate::engine) fn error(code: &str) -> HttpAnswer {
        answer(400, serde_json::json!({ "error": code }))
    }

    pub(in crate::engine) fn token(t: &str) -> HttpAnswer {
        answer(
            200,
            serde_json::json!({"access_token": t, "token_type": "Bearer", "expires_in": 600}),
        )
    }

    pub(in crate::engine) fn form(call: &HttpCall) -> Vec<(String, String)> {
        form_urlencoded::parse(call.body.as_bytes())
            .into_owned()
            .collect()
    }

    pub(in crate::engine) fn field(call: &HttpCall, name: &str) -> Option<String> {
        form(call)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub(in crate::engine) fn path(call: &HttpCall) -> String {
        call.headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    pub(in crate::engine) fn minted(v: &Verdict) -> Option<String> {
        match v {
            Verdict::Continue(ops) => ops.iter().find_map(|op| match op {
                HeaderOp::Set(name, value) if name == "authorization" => Some(value.clone()),
                _ => None,
            }),
            _ => None,
        }
    }

    pub(in crate::engine) fn status(v: &Verdict) -> u32 {
        match v {
            Verdict::Respond(r) => r.status,
            _ => 0,
        }
    }

    /// Moves the clock and runs the root's tick.
    pub(in crate::engine) fn tick(e: &mut Engine, h: &FakeHost, ms: u64) -> Vec<(u32, Verdict)> {
        h.advance_ms(ms);
        e.on_tick(h)
    }
}
