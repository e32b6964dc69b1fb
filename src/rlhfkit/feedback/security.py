"""Password hashing, session tokens, CSRF tokens and login throttling for the feedback app.

Everything here is standard-library only:

* passwords are hashed with scrypt (``hashlib.scrypt``), a deliberately slow, memory-hard
  hash; the parameters are stored in the hash string so they can be raised later;
* a session is a random 256-bit token, signed with the server's key (``token.signature``)
  and carried in an HttpOnly cookie (browsers) or an ``Authorization: Bearer`` header
  (machine annotators). The store keeps only the token's SHA-256 and an expiry, so logging
  out (deleting that row) ends the session at once, and neither a copy of the database nor
  a row written into it gives a usable token without the key;
* a CSRF token is an HMAC of the browser's random ``rk_csrf`` cookie, so a page on another
  origin can neither read nor compute it;
* :class:`LoginThrottle` slows password guessing per account and per client address.

The key comes from ``--secret-file`` / ``RLHFKIT_SECRET_FILE`` or ``RLHFKIT_SECRET``
(:func:`load_secret`); without one the store's database keeps a generated key (fine for a
laptop, not for a server whose database others can read).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
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


def dummy_hash() -> str:
    """A hash in the current format and cost that no password matches.

    Checking a password against it costs exactly what checking a real one does, so a login
    for an unknown or passwordless account takes as long as a wrong password.
    """
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"


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


def sign_session(secret: str, token: str) -> str:
    """The value a client holds for session ``token``: ``token.signature``."""
    return f"{token}.{_sign(secret, 'session|' + token)}"


def read_session(secret: str, value: str | None) -> str | None:
    """The session token inside a client's value if its signature is this server's, else None."""
    if not value or len(value) > 512 or "." not in value:
        return None
    token, signature = value.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(secret, "session|" + token)):
        return None
    return token


def hash_token(token: str) -> str:
    """What the store keeps of a session token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


MIN_SECRET_CHARS = 32


def load_secret(secret: str | None = None, secret_file: str | os.PathLike | None = None,
                env: dict | None = None) -> str | None:
    """The server's key: ``secret``, else the file, else ``RLHFKIT_SECRET_FILE`` / ``RLHFKIT_SECRET``.

    Returns None when none is given (the caller then falls back to the database's key).

    Raises:
        ValueError: the key is shorter than 32 characters, or the file cannot be read.
    """
    env = os.environ if env is None else env
    where = "secret"
    if secret is None:
        path = secret_file or env.get("RLHFKIT_SECRET_FILE")
        if path:
            where = str(path)
            try:
                secret = open(path, encoding="utf-8").read().strip()
            except OSError as err:
                raise ValueError(f"cannot read the secret file {path}: {err.strerror}") from None
        elif env.get("RLHFKIT_SECRET"):
            secret, where = env["RLHFKIT_SECRET"].strip(), "RLHFKIT_SECRET"
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"the key in {where} has {len(secret)} characters; use at least "
                         f"{MIN_SECRET_CHARS} random ones (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    return secret


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


class LoginThrottle:
    """Failed logins per account and per client address, with a wait that doubles.

    Each key (``account:NAME``, ``address:IP``) may fail ``free`` times within
    ``window_s``; after that, another attempt must wait ``2 ** (failures - free)`` seconds
    (at most ``max_wait_s``) after the last failure, and is answered 429 without the password
    being checked. Attempts refused that way do not count, so a client guessing as fast as it
    can gets a handful of tries and then waits. A successful login clears its account's
    failures (not its address's). The counts live in this process: several server processes
    each keep their own.

    Args:
        free_per_account: failures an account may have in the window before waits begin.
        free_per_address: the same for one client address (many accounts behind one NAT).
        window_s: how long a failure is remembered.
        max_wait_s: the longest wait.
        clock: seconds, monotonic (tests pass their own).
    """

    MAX_KEYS = 100_000

    def __init__(self, *, free_per_account: int = 5, free_per_address: int = 20,
                 window_s: float = 900.0, max_wait_s: float = 900.0, clock=time.monotonic):
        self.free = {"account": free_per_account, "address": free_per_address}
        self.window_s, self.max_wait_s, self.clock = window_s, max_wait_s, clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def wait(self, account: str, address: str) -> float:
        """Seconds before this account may try again from this address (0: now)."""
        now = self.clock()
        longest = 0.0
        with self._lock:
            for kind, key in (("account", account), ("address", address)):
                times = self._recent(f"{kind}:{key}", now)
                over = len(times) - self.free[kind]
                if over >= 0:
                    wait = min(self.max_wait_s, 2.0 ** over)
                    longest = max(longest, times[-1] + wait - now)
        return max(0.0, longest)

    def failed(self, account: str, address: str) -> None:
        """Count a wrong password (or unknown account)."""
        now = self.clock()
        with self._lock:
            if len(self._failures) > self.MAX_KEYS:  # forget the stale ones first
                for key in list(self._failures):
                    self._recent(key, now)
            for key in (f"account:{account}", f"address:{address}"):
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, account: str) -> None:
        """A right password: the account's failures are forgiven."""
        with self._lock:
            self._failures.pop(f"account:{account}", None)
