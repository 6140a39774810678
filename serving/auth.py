"""Optional API keys (setting `api_keys_file`): Bearer authentication, and the rules for /feedback.

The file holds one SHA-256 hash (hex) per line of the keys allowed (`galaxyvit serve --hash-key` prints
one); blank lines and `#` comments are skipped. The web page (GET /ui, serving/webui.py) needs no key: it
asks its user for one and sends it with each call. The server never sees the keys at rest and never logs
them: a request's key is hashed and compared with every stored hash in constant time. A key is known
inside the service by `key_id`, the first 16 hex digits of its hash: predictions record it, and
/feedback is taken only for predictions made for the same key, as `application/json`, and at most
`feedback_per_minute` per key (token bucket of `feedback_burst`, per API worker).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from pathlib import Path
from typing import Any

from serving.config import ServingConfig
from serving.errors import ServiceError, error_response
from serving.webui import PAGE

KEY_ID = "galaxyvit.key"  # the ASGI scope entry that carries the authenticated key's id to the routes
# health checks (also the Open Inference Protocol's, serving/oip.py) and the web page never need a key
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready", PAGE})
HASH = re.compile(r"[0-9a-f]{64}")


def hash_key(key: str) -> str:
    """The line to put in `api_keys_file` for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_hashes(path: str | Path) -> list[str]:
    """The hashes of an API keys file; a line that is not a SHA-256 hex digest is a ValueError (it is
    most likely a key pasted by mistake, which must not be served as one)."""
    hashes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if not HASH.fullmatch(entry):
            raise ValueError(
                f"{path}:{number}: not a SHA-256 hex digest (64 hex digits); see galaxyvit serve --hash-key"
            )
        hashes.append(entry)
    if not hashes:
        raise ValueError(f"{path} holds no API key hash: the service would refuse every request")
    return hashes


class ApiKeys:
    """The allowed keys' hashes; `identify` finds the key of a request."""

    def __init__(self, hashes: list[str]) -> None:
        self.hashes = list(hashes)

    def identify(self, authorization: str | None) -> str | None:
        """The key id of an `Authorization: Bearer KEY` header value, None when absent or not allowed.

        Every stored hash is compared (hmac.compare_digest), so the time taken does not tell which matched."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hash_key(token.strip())
        found = None
        for stored in self.hashes:
            if hmac.compare_digest(digest, stored):
                found = stored
        return found[:16] if found else None


class TokenBucket:
    """`burst` requests at once, refilled at `per_minute` / 60 per second."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a request may pass (one token taken), else the seconds until the next token."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class AuthMiddleware:
    """ASGI middleware: 401 without an allowed key; /feedback only as JSON (415) and within the key's rate (429)."""

    def __init__(self, app: Any, keys: ApiKeys, config: ServingConfig) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = OPEN_PATHS if config.protect_metrics else OPEN_PATHS | {"/metrics"}
        self.per_minute, self.burst = config.feedback_per_minute, config.feedback_burst
        self.buckets: dict[str, TokenBucket] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(PAGE + "/"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key_id = self.keys.identify(headers.get(b"authorization", b"").decode("latin-1"))
        if key_id is None:
            refusal = ServiceError("unauthorized", 401, "an API key is required: send Authorization: Bearer KEY")
            response = error_response(refusal)
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        if scope["path"] == "/feedback" and scope["method"] == "POST":
            media = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media != "application/json":
                unsupported = ServiceError(
                    "unsupported_media_type", 415, f"/feedback takes application/json, not {media or '(none)'!r}"
                )
                return await error_response(unsupported)(scope, receive, send)
            wait = self.buckets.setdefault(key_id, TokenBucket(self.per_minute, self.burst)).take()
            if wait > 0:
                limited = ServiceError(
                    "rate_limited", 429, f"too much feedback from this key: at most {self.per_minute} a minute"
                )
                return await error_response(limited, math.ceil(wait))(scope, receive, send)
        await self.app({**scope, KEY_ID: key_id}, receive, send)
