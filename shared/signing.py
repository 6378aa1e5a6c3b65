"""Signed jobs: only producers holding a signing key can make a worker spend credits.

The producer signs each job with HMAC-SHA256 over the key id and the job's canonical JSON
(sorted keys, no spaces, UTF-8), ``member_id`` included, and sends the key id and the
signature beside the job. The worker verifies before anything else, in constant time;
an unsigned, unknown-key or altered job charges nobody and becomes a dead letter.

A leaked broker password alone therefore cannot charge anyone: publishing a job needs
the signing secret, which only producers and workers hold. Keys rotate by id: workers
accept every key in ``CREDITS_JOB_VERIFY_KEYS`` plus their own signing key, so a new
key can be rolled out to workers first, then to producers, and the old one retired.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from shared.errors import JobNotAuthentic

ALGORITHM = "hmac-sha256"


def canonical(job: Any) -> bytes:
    """The bytes a signature covers: the job as JSON with sorted keys and no spaces."""
    return json.dumps(job, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(secret: str, key_id: str, job: Any) -> str:
    message = key_id.encode() + b"\n" + canonical(job)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(job: Any, key: tuple[str, str]) -> dict[str, str]:
    """The ``auth`` that travels with ``job``: the key id, the algorithm and the MAC."""
    key_id, secret = key
    return {"key_id": key_id, "alg": ALGORITHM, "sig": _mac(secret, key_id, job)}


def verify(job: Any, auth: Any, keys: dict[str, str]) -> str:
    """The key id that signed ``job``, or JobNotAuthentic saying what is wrong."""
    if auth is None:
        raise JobNotAuthentic("unsigned job: no signature was sent with it")
    if not isinstance(auth, dict):
        raise JobNotAuthentic("malformed signature: expected an object with key_id and sig")
    key_id, sig = auth.get("key_id"), auth.get("sig")
    if not isinstance(key_id, str) or not isinstance(sig, str):
        raise JobNotAuthentic("malformed signature: expected an object with key_id and sig")
    if auth.get("alg", ALGORITHM) != ALGORITHM:
        raise JobNotAuthentic(f"unsupported signature algorithm {str(auth.get('alg'))[:32]!r}")
    secret = keys.get(key_id)
    if secret is None:
        raise JobNotAuthentic(f"signed with unknown key id {key_id[:64]!r}")
    try:
        expected = _mac(secret, key_id, job)
    except (TypeError, ValueError):
        raise JobNotAuthentic("the job is not JSON: it cannot carry a signature") from None
    if not hmac.compare_digest(expected, sig):
        raise JobNotAuthentic(f"bad signature for key id {key_id!r}: forged or altered job")
    return key_id
