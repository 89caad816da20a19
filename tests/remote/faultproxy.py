"""A small fault-injecting HTTP proxy for tests: sits between a client and a server on loopback
and, for the requests it is told to, answers 500/503, resets the connection, cuts the body short,
or stalls. Also adds a fixed latency per request (for benchmarks: object stores answer in tens
of milliseconds).

    proxy = FaultProxy("http://127.0.0.1:PORT")   # the real server
    proxy.start()
    proxy.script(["503", "reset", None, "truncate"])   # the next matching requests, in order
    proxy.rate = 0.2; proxy.kinds = ("500", "reset")    # or at random (seeded)
    proxy.latency = 0.03
    ... s3fs with proxy.storage_options ...
    proxy.counts   # {"requests": n, "503": k, ...}
    proxy.stop()

Fault kinds:

- ``"500"`` / ``"503"``: an S3-style XML error (503 is ``SlowDown``, S3's throttling answer;
  with ``kind="gcs"``, the JSON API's error document);
- ``"reset"``: the connection is reset (TCP RST) before any response;
- ``"truncate"``: the response's headers, then half its body, then the connection closes (the
  client sees a body shorter than its Content-Length);
- ``"short"``: a well-formed response whose Content-Length and body are half of the real ones
  (a body cut short that no transport layer notices);
- ``"stall"``: nothing for ``stall_seconds`` (the client's read timeout should fire), then the
  connection closes;
- ``"403"`` / ``"404"``: ``AccessDenied`` / ``NoSuchKey`` (permanent errors; never chosen at
  random unless listed in ``kinds``).

``log`` records every request as ``(method, path, Range header or None, fault or None)``;
``max_in_flight`` is the most requests it was serving at once.

Only requests whose method is in ``methods`` (default GET) are faulted; ``match`` (a substring of
the path) narrows it further.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "KINDS"]

KINDS = ("500", "503", "reset", "truncate", "short", "stall", "403", "404")

_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


class _Abort(Exception):
    """Close this connection now (after a reset or a cut body)."""


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, kind: str = "s3") -> None:
        if kind not in ("s3", "gcs"):
            raise ValueError(f"kind must be 's3' or 'gcs', got {kind!r}")
        self.kind = kind
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.rate = 0.0
        self.kinds: tuple[str, ...] = ("500", "503", "reset", "truncate", "short")
        self.methods: tuple[str, ...] = ("GET",)
        self.match: str | None = None
        self.latency = 0.0
        self.stall_seconds = 3.0
        self.counts: dict[str, int] = {"requests": 0}
        self.in_flight = self.max_in_flight = 0
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self._script: list[str | None] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return self._server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict:
        """s3fs (or, for ``kind="gcs"``, gcsfs) options that go through this proxy; s3fs's
        timeouts are short, so that stalls end quickly."""
        if self.kind == "gcs":
            return {"endpoint_url": self.endpoint_url, "token": "anon"}
        return {
            "key": "test",
            "secret": "test",
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "config_kwargs": {"connect_timeout": 2, "read_timeout": 1},
        }

    def script(self, faults: Iterable[str | None]) -> None:
        """Faults for the next matching requests, in order (None: let that one through)."""
        with self._lock:
            self._script.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self.rate = 0.0

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="faultproxy",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------------------
    def _choose(self, method: str, path: str, range_: str | None) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if method not in self.methods or (self.match and self.match not in path):
                self.log.append((method, path, range_, None))
                return None
            if self._script:
                fault = self._script.pop(0)
            elif self.rate and self._rng.random() < self.rate:
                fault = self._rng.choice(self.kinds)
            else:
                fault = None
            if fault:
                self.counts[fault] = self.counts.get(fault, 0) + 1
            self.log.append((method, path, range_, fault))
            return fault


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 overflowed when a loader's workers and their fetch
    # threads (~20 connections) connected at once: a dropped SYN is retried after 1 s, and
    # that stalled a first batch by ~1 s in about one run in four. Object stores do not.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    _local = threading.local()

    def log_message(self, *args) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (_Abort, ConnectionError, socket.timeout, OSError):
            pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _upstream(self, method: str, body: bytes) -> tuple[int, str, list, bytes]:
        owner = self.owner
        for attempt in range(2):  # a kept-alive upstream connection may have gone stale
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(
                    owner.upstream_host, owner.upstream_port, timeout=60
                )
                self._local.conn = conn
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            try:
                conn.request(method, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise _Abort()

    def _error(self, status: int, code: str) -> None:
        if self.owner.kind == "gcs":  # the JSON API's error document
            body = json.dumps(
                {
                    "error": {
                        "code": status,
                        "message": "injected by faultproxy",
                        "errors": [{"reason": code}],
                    }
                }
            ).encode()
            kind = "application/json"
        else:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by faultproxy</Message></Error>"
            ).encode()
            kind = "application/xml"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        owner = self.owner
        with owner._lock:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            self._serve_one()
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _serve_one(self) -> None:
        owner = self.owner
        body = self._body()
        method = self.command
        fault = owner._choose(method, self.path, self.headers.get("Range"))
        if owner.latency:
            time.sleep(owner.latency)
        if fault == "reset":
            self._reset()
        if fault == "stall":
            time.sleep(owner.stall_seconds)
            self._reset()
        if fault in ("500", "503", "403", "404"):
            self._error(
                int(fault),
                {
                    "500": "InternalError",
                    "503": "SlowDown",
                    "403": "AccessDenied",
                    "404": "NoSuchKey",
                }[fault],
            )
            return
        status, reason, headers, data = self._upstream(method, body)
        send = data
        if fault in ("truncate", "short") and len(data) > 1 and 200 <= status < 300:
            send = data[: len(data) // 2]
        self.send_response(status, reason)
        for k, v in headers:
            if k.lower() in _HOP or k.lower() in ("content-length", "date", "server"):
                continue
            self.send_header(k, v)
        length = len(send) if fault == "short" else len(data)
        if method != "HEAD":
            self.send_header("Content-Length", str(length))
        else:
            self.send_header(
                "Content-Length",
                dict((k.lower(), v) for k, v in headers).get("content-length", "0"),
            )
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(send)
        if fault == "truncate" and send is not data:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            raise _Abort()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve
