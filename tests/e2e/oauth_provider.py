"""A real OAuth 2.0 provider for the OAuth tests, built with Authlib (its
Flask integration) and served over HTTPS on 127.0.0.1:

- GET  /authorize  Authorization Code with PKCE (S256 required); approves at
                   once (the test user) and redirects with code and state.
- POST /token      authorization_code and refresh_token grants; every refresh
                   rotates the refresh token and revokes the old one.
- GET  /api/echo   accepts only the newest access token, and echoes it back
                   with every earlier one, the newest refresh token and the
                   client secret (an upstream that reflects what it can).
- /control/...     for the test: counts, the tokens issued, the lifetime of
                   the next access tokens, revoking everything.

Usage: oauth_provider.py CERT KEY LOG; prints its port, serves until killed.
Client: id "agent-vault-test", secret "test-client-secret", any redirect URI
on 127.0.0.1 or localhost."""
import json, logging, secrets, ssl, sys, threading, time, warnings
from urllib.parse import urlparse

from flask import Flask, request, jsonify
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge

warnings.simplefilter("ignore")  # Authlib's deprecation notices, not ours
cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
CLIENT_ID, CLIENT_SECRET = "agent-vault-test", "test-client-secret"

lock = threading.Lock()
state = {
    "ttl": 3600,
    "refreshes": 0,        # refresh_token grants asked for
    "refresh_ok": 0,       # ... and granted
    "code_exchanges": 0,   # authorization codes exchanged
    "pkce_verified": 0,    # ... whose code_verifier matched the S256 challenge
    "access": [],          # every access token issued, oldest first
    "refresh": [],         # every refresh token issued
    "revoked": set(),      # refresh tokens no longer valid
    "current": None,       # the one access token the API accepts
    "api_calls": 0,
}
codes = {}


def log(record):
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")


class User:
    def get_user_id(self):
        return 1


class Client:
    client_id = CLIENT_ID

    def get_client_id(self):
        return CLIENT_ID

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, uri):
        host = urlparse(uri).hostname
        return host in ("127.0.0.1", "localhost")

    def check_client_secret(self, secret):
        return secrets.compare_digest(secret, CLIENT_SECRET)

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class Code:
    def __init__(self, code, redirect_uri, scope, challenge, method):
        self.code, self.redirect_uri, self.scope = code, redirect_uri, scope
        self.code_challenge, self.code_challenge_method = challenge, method

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class Token:
    def __init__(self, refresh_token, scope):
        self.refresh_token, self.scope = refresh_token, scope

    def check_client(self, client):
        return client.get_client_id() == CLIENT_ID

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return 0

    def is_expired(self):
        return False

    def is_revoked(self):
        return self.refresh_token in state["revoked"]

    def get_user(self):
        return User()


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]

    def save_authorization_code(self, code, req):
        codes[code] = Code(code, req.payload.redirect_uri, req.payload.scope,
                           req.payload.data.get("code_challenge"),
                           req.payload.data.get("code_challenge_method"))

    def query_authorization_code(self, code, client):
        return codes.get(code)

    def delete_authorization_code(self, code):
        codes.pop(code.code, None)

    def authenticate_user(self, code):
        return User()


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token):
        with lock:
            if refresh_token in state["refresh"] and refresh_token not in state["revoked"]:
                return Token(refresh_token, "")
        return None

    def authenticate_user(self, credential):
        return User()

    def revoke_old_credential(self, credential):
        with lock:
            state["revoked"].add(credential.refresh_token)


class Verified(CodeChallenge):
    def validate_code_verifier(self, grant, result):
        super().validate_code_verifier(grant, result)
        with lock:
            state["pkce_verified"] += 1


def save_token(token, req):
    with lock:
        state["access"].append(token["access_token"])
        state["current"] = token["access_token"]
        if "refresh_token" in token:
            state["refresh"].append(token["refresh_token"])


def random_token(*_args, **_kw):
    return secrets.token_urlsafe(32)


app = Flask(__name__)
server = AuthorizationServer(app, query_client=lambda cid: Client() if cid == CLIENT_ID else None,
                             save_token=save_token)
server.register_token_generator(
    "default",
    BearerTokenGenerator(random_token, random_token, lambda client, grant_type: state["ttl"]))
server.register_grant(CodeGrant, [Verified(required=True)])
server.register_grant(RefreshGrant)


@app.get("/authorize")
def authorize():
    # PKCE is required of every client here, confidential or not.
    if request.args.get("code_challenge_method") != "S256" or not request.args.get("code_challenge"):
        return jsonify(error="invalid_request", error_description="PKCE S256 required"), 400
    log({"endpoint": "authorize", "args": dict(request.args)})
    return server.create_authorization_response(grant_user=User())


@app.post("/token")
def token():
    grant = request.form.get("grant_type")
    refresh = grant == "refresh_token"
    if refresh:
        with lock:
            state["refreshes"] += 1
        # Slow enough that concurrent requests pile up behind one refresh.
        time.sleep(0.3)
    response = server.create_token_response()
    if response.status_code == 200:
        with lock:
            state["refresh_ok" if refresh else "code_exchanges"] += int(True)
    log({"endpoint": "token", "grant": grant, "status": response.status_code})
    return response


@app.get("/api/echo")
def api_echo():
    auth = request.headers.get("Authorization", "")
    with lock:
        state["api_calls"] += 1
        current = state["current"]
        earlier = [t for t in state["access"] if t != current]
        refresh = state["refresh"][-1] if state["refresh"] else ""
    if not current or not secrets.compare_digest(auth, "Bearer " + current):
        return jsonify(error="invalid_token"), 401
    # A hostile echo: the newest refresh token and the client secret too.
    return jsonify(token=current, authorization=auth, earlier=earlier, refresh=refresh,
                   client_secret=CLIENT_SECRET)


@app.get("/control/stats")
def stats():
    with lock:
        return jsonify({k: v for k, v in state.items() if k != "revoked"})


@app.post("/control/ttl/<int:seconds>")
def set_ttl(seconds):
    with lock:
        state["ttl"] = seconds
    return jsonify(ttl=seconds)


@app.post("/control/revoke-all")
def revoke_all():
    with lock:
        state["revoked"].update(state["refresh"])
    return jsonify(ok=True)


if __name__ == "__main__":
    from werkzeug.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    print(srv.server_port, flush=True)
    srv.serve_forever()
