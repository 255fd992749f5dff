#!/usr/bin/env python3
"""Authlib as the RFC 7523 counterpart, on 127.0.0.1, for the interop tests. Glue only: one
client, the keys, Authlib's JWT bearer grant and its JWT client-assertion authentication
(`private_key_jwt`), and a Flask route; every check is Authlib's.

Usage: authlib_as.py PORT KEYS_JSON, where KEYS_JSON holds the public JWKs `idp` (signs the
subject assertions, issuer `https://idp.interop`) and `client` (the filter's private_key_jwt key).
"""
import json
import logging
import sys

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.jose import JsonWebKey
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from flask import Flask

PORT = int(sys.argv[1])
KEYS = json.load(open(sys.argv[2]))
TOKEN_URL = f"http://127.0.0.1:{PORT}/token"
IDP_ISSUER = "https://idp.interop"
IDP_KEY = JsonWebKey.import_key(KEYS["idp"])
CLIENT_KEY = JsonWebKey.import_key(KEYS["client"])


class Client(ClientMixin):
    client_id = "edge-proxy"

    def get_client_id(self):
        return self.client_id

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "private_key_jwt" and endpoint == "token"

    def check_grant_type(self, grant_type):
        return grant_type == JWTBearerGrant.GRANT_TYPE

    def get_allowed_scope(self, scope):
        return scope or ""


CLIENT = Client()
SEEN_JTI = set()


class ClientAssertion(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def validate_jti(self, claims, jti):
        if jti in SEEN_JTI:
            return False
        SEEN_JTI.add(jti)
        return True

    def resolve_client_public_key(self, client, headers):
        return CLIENT_KEY


class Grant(JWTBearerGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self):
        # The filter proves itself with Authlib's private_key_jwt check, then Authlib judges the
        # assertion.
        self.authenticate_token_endpoint_client()
        super().validate_token_request()

    def resolve_issuer_client(self, issuer):
        return CLIENT if issuer == IDP_ISSUER else None

    def resolve_client_key(self, client, headers, payload):
        return IDP_KEY

    def authenticate_user(self, subject):
        return {"sub": subject}

    def has_granted_permission(self, client, user):
        return True


app = Flask(__name__)
server = AuthorizationServer(app, query_client=lambda cid: CLIENT if cid == CLIENT.client_id else None,
                             save_token=lambda token, request: None)
server.register_grant(Grant)
server.register_client_auth_method(ClientAssertion.CLIENT_AUTH_METHOD, ClientAssertion(TOKEN_URL))


@app.route("/token", methods=["POST"])
def token():
    return server.create_token_response()


logging.getLogger("werkzeug").setLevel(logging.ERROR)
app.run(host="127.0.0.1", port=PORT, threaded=True)
