#!/usr/bin/env python3
"""IdentityPython idpyoidc as IdP and STS on 127.0.0.1, for the interop tests. Glue only:
configuration, clients and an HTTP binding; every OAuth decision is idpyoidc's.

Usage: idpyoidc_sts.py PORT OUT_JSON. Serves POST /token (authorization code, token exchange)
and GET /jwks; mints subject tokens through its own authorization-code flow and writes them,
with the issuer, to OUT_JSON once it listens.
"""
import json
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from idpyoidc.message.oidc import AuthorizationRequest
from idpyoidc.server import Server
from idpyoidc.server.authn_event import create_authn_event
from idpyoidc.server.authz import AuthzHandling
from idpyoidc.server.client_authn import verify_client
from idpyoidc.server.configure import ASConfiguration
from idpyoidc.server.cookie_handler import CookieHandler
from idpyoidc.server.user_authn.authn_context import INTERNETPROTOCOLPASSWORD
from idpyoidc.server.user_info import UserInfo

PORT, OUT = int(sys.argv[1]), sys.argv[2]
ISSUER = f"http://127.0.0.1:{PORT}/"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ALLOWED_AUDIENCE = "https://orders.example"
CLIENTS = {"edge-proxy": "edge-secret", "webapp": "webapp-secret"}
CRYPT = {"kwargs": {"keys": {"key_defs": [{"type": "OCT", "use": ["enc"], "kid": "password"},
                                          {"type": "OCT", "use": ["enc"], "kid": "salt"}]}, "iterations": 1}}

CONF = {
    "issuer": ISSUER,
    "httpc_params": {"verify": False, "timeout": 1},
    "preference": {"subject_types_supported": ["public"]},
    "cookie_handler": {"class": CookieHandler, "kwargs": {"keys": {"key_defs": [
        {"type": "oct", "kid": "sig", "use": ["sig"]}, {"type": "oct", "kid": "enc", "use": ["enc"]}]}}},
    "keys": {"uri_path": "jwks", "key_defs": [{"type": "EC", "crv": "P-256", "use": ["sig"]}]},
    "endpoint": {
        "authorization": {"path": "authorization", "class": "idpyoidc.server.oauth2.authorization.Authorization", "kwargs": {}},
        "token": {"path": "token", "class": "idpyoidc.server.oidc.token.Token",
                  "kwargs": {"client_authn_method": ["client_secret_basic", "client_secret_post"]}},
    },
    "authentication": {"anon": {"acr": INTERNETPROTOCOLPASSWORD, "class": "idpyoidc.server.user_authn.user.NoAuthn",
                                "kwargs": {"user": "diana"}}},
    "userinfo": {"class": UserInfo, "kwargs": {"db": {"diana": {"sub": "diana"}}}},
    "client_authn": verify_client,
    "template_dir": "template",
    "authz": {"class": AuthzHandling, "kwargs": {"grant_config": {
        "usage_rules": {
            "authorization_code": {"supports_minting": ["access_token", "refresh_token"], "max_usage": 1},
            "access_token": {"supports_minting": ["access_token"], "expires_in": 600},
            "refresh_token": {"supports_minting": ["access_token", "refresh_token"], "expires_in": 43200},
        },
        "expires_in": 43200}}},
    "token_handler_args": {
        "code": {"lifetime": 600, "kwargs": {"crypt_conf": CRYPT}},
        "token": {"class": "idpyoidc.server.token.jwt_token.JWTToken",
                  "kwargs": {"lifetime": 3600, "add_claims_by_scope": True, "aud": ["https://edge.example"]}},
        "refresh": {"class": "idpyoidc.server.token.jwt_token.JWTToken", "kwargs": {"lifetime": 3600}},
    },
}

workdir = tempfile.mkdtemp(prefix="idpyoidc-")
server = Server(ASConfiguration(conf=CONF, base_path=workdir), cwd=workdir)
context = server.context
context.map_supported_to_preferred()
for client_id, secret in CLIENTS.items():
    context.cdb[client_id] = {
        "client_secret": secret,
        "redirect_uris": [("https://webapp.example/cb", None)],
        "client_salt": "salted",
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types_supported": ["authorization_code", TOKEN_EXCHANGE],
        "response_types": ["code"],
        "allowed_scopes": ["openid", "profile"],
    }
token_endpoint = server.get_endpoint("token")
policy = token_endpoint.grant_type_helper[TOKEN_EXCHANGE].config["policy"][""]
policy["kwargs"] = {"audience": [ALLOWED_AUDIENCE]}


def subject_token() -> str:
    """An access token for diana, through idpyoidc's authorization-code flow."""
    areq = AuthorizationRequest(client_id="webapp", redirect_uri="https://webapp.example/cb",
                                scope=["openid"], state="STATE", response_type="code")
    manager = context.session_manager
    session_id = manager.create_session(create_authn_event("diana"), areq, "diana", client_id="webapp")
    grant = context.authz(session_id, areq)
    code = grant.mint_token(session_id=session_id, context=context, token_class="authorization_code",
                            token_handler=manager.token_handler["authorization_code"],
                            usage_rules=grant.usage_rules.get("authorization_code", {}))
    req = token_endpoint.parse_request({"grant_type": "authorization_code", "code": code.value, "state": "STATE",
                                        "redirect_uri": "https://webapp.example/cb", "client_id": "webapp",
                                        "client_secret": CLIENTS["webapp"]})
    return token_endpoint.process_request(request=req)["response_args"]["access_token"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/jwks":
            self.reply(200, server.keyjar.export_jwks())
        else:
            self.reply(404, {"error": "not_found"})

    def do_POST(self):
        if self.path != "/token":
            return self.reply(404, {"error": "not_found"})
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        http_info = {"headers": {"authorization": self.headers.get("authorization")}}
        req = token_endpoint.parse_request(body, http_info=http_info)
        if "error" in req:
            err = req.to_dict()
            return self.reply(401 if err["error"] == "invalid_client" else 400, err)
        resp = token_endpoint.process_request(request=req)
        if "error" in resp:
            err = {k: resp[k] for k in ("error", "error_description") if k in resp}
            return self.reply(401 if resp["error"] == "invalid_client" else 400, err)
        self.reply(200, resp["response_args"].to_dict())


httpd = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
with open(OUT + ".tmp", "w") as f:
    json.dump({"issuer": ISSUER, "subject_tokens": [subject_token() for _ in range(4)]}, f)
import os  # noqa: E402  (rename only once the server listens)
os.rename(OUT + ".tmp", OUT)
httpd.serve_forever()
