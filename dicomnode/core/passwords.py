"""Secrets in the config: password hashes for console users (PBKDF2-SHA256) and API tokens.

Everything that compares a secret does it here, in constant time. API tokens are stored either as
"sha256$<hex>" (what `dicomnode token create` writes) or, for older deployments, in plain text.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets

_ITERATIONS = 390_000
PASSWORD_SCHEME = "pbkdf2_sha256"
TOKEN_HASH_PREFIX = "sha256$"
_TOKEN_HASH_RE = re.compile(r"^sha256\$[0-9a-f]{64}$")
# random secrets (API tokens, session secrets) must carry at least 128 bits
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT = 8  # "aaaa…" or "abab…" is long but not random
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str, salt: bytes | None = None, iterations: int = _ITERATIONS) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PASSWORD_SCHEME}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _parse_password_hash(encoded: str) -> tuple[int, bytes, str] | None:
    """(iterations, salt, digest in base64), or None when this is not one of our hashes."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != PASSWORD_SCHEME or not parts[1].isdigit() or int(parts[1]) < 1:
        return None
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or len(digest) != 32:
        return None
    return int(parts[1]), salt, parts[3]


def is_password_hash(encoded: str) -> bool:
    return _parse_password_hash(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    parsed = _parse_password_hash(encoded)
    if parsed is None:  # a malformed hash never matches (and never raises into the login handler)
        return False
    iterations, salt, digest = parsed
    check = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hmac.compare_digest(base64.b64encode(check).decode(), digest)


# -- API tokens and other random secrets ----------------------------------------------------
def new_token() -> str:
    """A fresh API token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # tokens are random (>= 128 bits): a fast hash is enough, a slow one would only cost every request
    return TOKEN_HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def is_token_hash(stored: str) -> bool:
    return bool(_TOKEN_HASH_RE.match(stored))


def secret_weakness(secret: str) -> str | None:
    """Why a random secret (token, session secret) is too weak to use, or None. Never quotes it."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"is {len(secret)} characters long; at least {MIN_SECRET_LENGTH} random characters are required"
    if len(set(secret)) < MIN_SECRET_DISTINCT:
        return f"uses only {len(set(secret))} different characters; it must be random"
    return None


def token_matches(presented: str, stored: list[str]) -> str | None:
    """The stored entry that `presented` matches, or None. Every entry is compared, each in constant
    time, whether it is a hash or (older configs) a plain token."""
    presented_hash = hash_token(presented)
    found: str | None = None
    for entry in stored:
        expected, given = (entry, presented_hash) if is_token_hash(entry) else (entry, presented)
        if hmac.compare_digest(expected.encode(), given.encode()) and found is None:
            found = entry
    return found


def token_label(entry: str) -> str:
    """How a token appears in the audit log: never the token itself."""
    if is_token_hash(entry):
        return f"token:{entry[len(TOKEN_HASH_PREFIX):][:8]}"
    return f"token:{entry[:4]}…"  # plain tokens kept their old label (first 4 characters)
