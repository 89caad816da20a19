"""Retries of remote reads: which errors are transient, exponential backoff with jitter within a
bounded budget, and the error raised when the budget is spent.

Transient: HTTP 5xx, 429/408 and throttling answers (``SlowDown``), connection resets and
refusals, timeouts, a body cut short. Not retried: 403/404 (and every other 4xx), and errors
that are not about the network at all.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import FastloadError, MissingShardError, RemoteAccessError, RemoteReadError

__all__ = [
    "RetryPolicy",
    "RemoteReadError",
    "RemoteAccessError",
    "ShortRead",
    "is_transient",
    "http_status",
    "call_with_retries",
]

T = TypeVar("T")


class ShortRead(Exception):
    """A response body ended before the bytes asked for (the rest is fetched again)."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries at most, and no new try after ``budget_s`` seconds; the wait before
    try k+1 is uniform in [0, min(cap_s, base_s * 2**k)] ("full jitter"), so processes that
    failed together do not retry together."""

    attempts: int = 8
    base_s: float = 0.1
    cap_s: float = 5.0
    budget_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before try ``attempt + 1``, drawn from ``rng`` (default: the ``random``
        module's generator)."""
        uniform = random.uniform if rng is None else rng.uniform
        return uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


_TRANSIENT_NAMES = (
    "timeout",
    "connection",
    "disconnect",
    "payload",
    "throttl",
    "slowdown",
    "incompleteread",
    "protocolerror",
    "endpointconnection",
    "responsestreaming",
    "serviceunavailable",
    "internalerror",
    "toomanyrequests",
    "reset",
    "checksum",
)
_TRANSIENT_ERRNOS = {
    errno.EBUSY,
    errno.EAGAIN,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    getattr(errno, "EREMOTEIO", 121),
}


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def http_status(e: BaseException) -> int | None:
    """The HTTP status behind an exception (botocore, aiohttp, gcsfs, fsspec's http), if any."""
    for x in _chain(e):
        if type(x).__module__.startswith("aiohttp.http"):
            continue  # a parser's error (a body cut short...): its "code" is no HTTP answer
        response = getattr(x, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        for attr in ("status", "code", "status_code"):
            status = getattr(x, attr, None)
            if isinstance(status, int) and 100 <= status < 600:
                return status
        if type(x) is OSError and str(x).startswith("Forbidden:"):
            return 403  # how gcsfs reports a 403
    return None


def is_transient(e: BaseException) -> bool:
    """Whether a failed request is worth another try."""
    if isinstance(e, ShortRead):
        return True
    status = http_status(e)
    if status is not None:
        return status >= 500 or status in (408, 429)
    for x in _chain(e):
        if isinstance(x, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(x, (ConnectionError, TimeoutError)):
            return True
        if isinstance(x, OSError) and x.errno in _TRANSIENT_ERRNOS:
            return True
        name = type(x).__name__.lower()
        if any(word in name for word in _TRANSIENT_NAMES):
            return True
        text = str(x)
        if "SlowDown" in text or "reduce your request rate" in text:
            return True
    return False


def _describe(e: BaseException) -> str:
    status = http_status(e)
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {text}"


def call_with_retries(
    fn: Callable[[int], T],
    what: str,
    policy: RetryPolicy,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """``fn(attempt)`` until it returns, retrying transient errors per ``policy``.

    ``what`` names the object (and range) in the final error, which also gives the number of
    attempts and the last cause. A 404 becomes :class:`MissingShardError` (a FileNotFoundError),
    a 403 :class:`RemoteAccessError`, each at once.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except Exception as e:
            attempt += 1
            status = http_status(e)
            if isinstance(e, FastloadError) and not isinstance(e, RemoteReadError):
                raise
            if not is_transient(e):
                if status == 404 or (status is None and isinstance(e, FileNotFoundError)):
                    raise MissingShardError(f"{what}: not found (HTTP 404; {_describe(e)})") from e
                if status == 403 or (status is None and isinstance(e, PermissionError)):
                    raise RemoteAccessError(
                        f"{what}: access denied (HTTP 403; check the "
                        f"credentials in storage_options or the "
                        f"environment; {_describe(e)})"
                    ) from e
                raise RemoteReadError(
                    f"{what}: failed after {attempt} attempt(s) with a "
                    f"permanent error: {_describe(e)}"
                ) from e
            elapsed = time.monotonic() - start
            wait = policy.delay(attempt - 1)
            if attempt >= policy.attempts or elapsed + wait > policy.budget_s:
                raise RemoteReadError(
                    f"{what}: failed after {attempt} attempts in "
                    f"{elapsed:.1f} s (retry budget: {policy.attempts} "
                    f"attempts, {policy.budget_s:g} s); last error: "
                    f"{_describe(e)}"
                ) from e
            if on_retry is not None:
                on_retry(e)
            time.sleep(wait)
