#!/usr/bin/env python3
"""IdentityPython idpyoidc as IdP and STS on 127.0.0.1, for the interop tests. Glue only:
configuration, clients and an HTTP binding; every OAuth decision is idpyoidc's.

Usage: idpyoidc_sts.py PORT OUT_JSON [opaque]. Serves POST /token (authorization code, token
exchange, CIBA), POST /bc-authorize (CIBA backchannel authentication), POST /introspection (RFC
7662) and GET /jwks; with `opaque`, its access tokens are its own opaque ones (DefaultToken), not
JWTs, and name the filter's client among their audiences (idpyoidc tells only a token's audience
that it is active). It mints subject tokens
through its own authorization-code flow and writes them, with the issuer, to OUT_JSON once it
listens. For CIBA, POST /_device/approve {"user": …} stands in for the user's device: the user
authenticates for the backchannel request pending for them, the way idpyoidc's own CIBA tests do;
GET /_device/pending lists the users with a pending request.
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
from idpyoidc.server.exception import UnAuthorizedClient
from idpyoidc.server.oidc.backchannel_authentication import CIBATokenHelper
from idpyoidc.server.user_authn.authn_context import INTERNETPROTOCOLPASSWORD
from idpyoidc.server.user_info import UserInfo

PORT, OUT = int(sys.argv[1]), sys.argv[2]
OPAQUE = sys.argv[3:] == ["opaque"]
ISSUER = f"http://127.0.0.1:{PORT}/"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
CIBA = "urn:openid:params:grant-type:ciba"
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
        "backchannel_authentication": {
            "path": "bc-authorize",
            "class": "idpyoidc.server.oidc.backchannel_authentication.BackChannelAuthentication",
            "kwargs": {"client_authn_method": ["client_secret_basic"], "interval": 3, "expires_in": 60}},
        "introspection": {"path": "introspection", "class": "idpyoidc.server.oauth2.introspection.Introspection",
                          "kwargs": {"client_authn_method": ["client_secret_basic"]}},
    },
    "authentication": {"anon": {"acr": INTERNETPROTOCOLPASSWORD, "class": "idpyoidc.server.user_authn.user.NoAuthn",
                                "kwargs": {"user": "diana"}}},
    "userinfo": {"class": UserInfo, "kwargs": {"db": {"diana": {"sub": "diana"}, "erin": {"sub": "erin"}}}},
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
        "id_token": {"class": "idpyoidc.server.token.id_token.IDToken", "kwargs": {}},
    },
}

if OPAQUE:
    CONF["token_handler_args"]["token"] = {"class": "idpyoidc.server.token.DefaultToken",
                                           "kwargs": {"lifetime": 3600, "crypt_conf": CRYPT}}
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
        "grant_types_supported": ["authorization_code", TOKEN_EXCHANGE, CIBA],
        "response_types": ["code"],
        "allowed_scopes": ["openid", "profile"],
        "id_token_signed_response_alg": "ES256",  # the OP's only signing key is EC
    }
token_endpoint = server.get_endpoint("token")
backchannel_endpoint = server.get_endpoint("backchannel_authentication")
introspection_endpoint = server.get_endpoint("introspection")
# Which user a login_hint names: here, the subject identifier itself.
USERS = {"diana", "erin"}


def login_hint_lookup(hint):
    if hint not in USERS:
        raise KeyError(hint)
    return hint


context.login_hint_lookup = login_hint_lookup
PENDING = {}  # user -> the backchannel request waiting for them


# --- FIX of idpyoidc 3.0.0-5.0.0, CIBA token grant (the only change to idpyoidc's logic). ---
# post_parse_request compares the client's subordinate grants (full session keys) with a bare
# grant id, and builds the session path from a full key; process_request then reads a
# "branch_id" that _get_session_info never sets. Both made the CIBA token grant unusable.
def _post_parse_request(self, request, client_id="", **kwargs):
    manager = self.endpoint.upstream_get("context").session_manager
    session_id = manager.auth_req_id_map[request["auth_req_id"]]
    info = manager.get_session_info(session_id)
    own = manager.session_key(info["user_id"], info["client_id"], info["grant_id"])
    others = [s for s in manager.get([info["user_id"], info["client_id"]]).subordinate if s != own]
    if len(others) != 1:
        why = "No authentication found" if not others else "More then one authentication found"
        return self.error_cls(error="invalid_request", error_description=why)
    request["_session_path"] = manager.unpack_session_key(others[0])
    request["_session_id"] = session_id
    return request


_original_get_session_info = CIBATokenHelper._get_session_info


def _get_session_info(self, request, session_manager):
    info, grant = _original_get_session_info(self, request, session_manager)
    info["branch_id"] = session_manager.encrypted_session_id(*request["_session_path"])
    return info, grant


CIBATokenHelper.post_parse_request = _post_parse_request
CIBATokenHelper._get_session_info = _get_session_info
# --- end of FIX ---
policy = token_endpoint.grant_type_helper[TOKEN_EXCHANGE].config["policy"][""]
policy["kwargs"] = {"audience": [ALLOWED_AUDIENCE]}


def subject_token(user="diana") -> str:
    """An access token for `user`, through idpyoidc's authorization-code flow."""
    areq = AuthorizationRequest(client_id="webapp", redirect_uri="https://webapp.example/cb",
                                scope=["openid"], state="STATE", response_type="code")
    manager = context.session_manager
    session_id = manager.create_session(create_authn_event(user), areq, user, client_id="webapp")
    grant = context.authz(session_id, areq)
    if OPAQUE:
        grant.resources = ["edge-proxy"]
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
        elif self.path == "/_device/pending":
            self.reply(200, sorted(PENDING))
        else:
            self.reply(404, {"error": "not_found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        if self.path == "/_device/approve":
            user = json.loads(body)["user"]
            manager = context.session_manager
            manager.create_session(create_authn_event(user), PENDING.pop(user), user, client_id="edge-proxy")
            return self.reply(200, {})
        endpoint = {"/token": token_endpoint, "/bc-authorize": backchannel_endpoint,
                    "/introspection": introspection_endpoint}.get(self.path)
        if endpoint is None:
            return self.reply(404, {"error": "not_found"})
        http_info = {"headers": {"authorization": self.headers.get("authorization")}}
        try:
            req = endpoint.parse_request(body, http_info=http_info)
        except UnAuthorizedClient:
            # Raised, not returned, by some endpoints (introspection): the binding answers it
            # as RFC 6749 §5.2 says, 401 invalid_client.
            return self.reply(401, {"error": "invalid_client"})
        if "error" in req:
            err = req.to_dict()
            return self.reply(401 if err["error"] == "invalid_client" else 400, err)
        resp = endpoint.process_request(request=req)
        if endpoint is backchannel_endpoint and "response_args" in resp:
            PENDING[login_hint_lookup(req["login_hint"])] = req
        if "error" in resp:
            err = {k: resp[k] for k in ("error", "error_description") if k in resp}
            return self.reply(401 if resp["error"] == "invalid_client" else 400, err)
        args = resp["response_args"]
        self.reply(200, args.to_dict() if hasattr(args, "to_dict") else args)


httpd = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
with open(OUT + ".tmp", "w") as f:
    json.dump({"issuer": ISSUER, "subject_tokens": [subject_token() for _ in range(4)],
               "erin_token": subject_token("erin")}, f)
import os  # noqa: E402  (rename only once the server listens)
os.rename(OUT + ".tmp", OUT)
httpd.serve_forever()
