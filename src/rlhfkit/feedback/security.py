"""Password hashing, signed session tokens and CSRF tokens for the feedback app.

Everything here is standard-library only:

* passwords are hashed with scrypt (``hashlib.scrypt``), a deliberately slow, memory-hard
  hash; the parameters are stored in the hash string so they can be raised later;
* a session is an HMAC-SHA256-signed token ``uid.expires.nonce.signature`` carried in an
  HttpOnly cookie (browsers) or an ``Authorization: Bearer`` header (machine annotators);
* a CSRF token is an HMAC of the browser's random ``rk_csrf`` cookie, so a page on another
  origin can neither read nor compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

# scrypt cost: N=2**14, r=8, p=1 takes ~50 ms and 16 MiB per hash, the interactive-login
# setting recommended in the scrypt paper (Percival 2009, section 7). Tests may lower it
# through RLHFKIT_SCRYPT_N to keep many account creations fast.
SCRYPT_N = int(os.environ.get("RLHFKIT_SCRYPT_N", 2**14))
SCRYPT_R = 8
SCRYPT_P = 1


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int | None = None) -> str:
    """Hash a password with scrypt and a random 16-byte salt.

    Returns:
        ``scrypt$N$r$p$salt$hash`` with salt and hash in URL-safe base64.
    """
    n = n or SCRYPT_N
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=256 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Check a password against a hash from :func:`hash_password` in constant time."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), maxmem=256 * 1024 * 1024, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def new_secret() -> str:
    """A fresh random key for signing sessions (256 bits)."""
    return secrets.token_urlsafe(32)


def _sign(secret: str, message: str) -> str:
    return _b64(hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest())


def make_session_token(secret: str, user_id: int, generation: int, ttl_s: int) -> str:
    """A signed token naming the user, their session generation and an expiry time.

    ``generation`` is a per-user counter: raising it (on logout-everywhere, password change
    or deactivation) invalidates every token issued before.
    """
    expires = int(time.time()) + ttl_s
    body = f"{user_id}.{generation}.{expires}.{secrets.token_urlsafe(8)}"
    return f"{body}.{_sign(secret, 'session|' + body)}"


def read_session_token(secret: str, token: str | None) -> tuple[int, int] | None:
    """Return ``(user_id, generation)`` for a valid, unexpired token, else None."""
    if not token or len(token) > 512:
        return None
    parts = token.split(".")
    if len(parts) != 5:
        return None
    body, signature = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(signature, _sign(secret, "session|" + body)):
        return None
    try:
        user_id, generation, expires = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if expires < time.time():
        return None
    return user_id, generation


def csrf_token(secret: str, csrf_cookie: str) -> str:
    """The CSRF token a form or fetch must echo for a browser holding ``csrf_cookie``."""
    return _sign(secret, "csrf|" + csrf_cookie)


def check_csrf(secret: str, csrf_cookie: str | None, token: str | None) -> bool:
    """True when ``token`` was derived from this browser's CSRF cookie."""
    if not csrf_cookie or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, csrf_cookie), token)


def hash_invite(token: str) -> str:
    """Invite links are stored hashed, so a leaked database does not leak open invites."""
    return hashlib.sha256(token.encode()).hexdigest()
