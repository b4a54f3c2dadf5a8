"""A real HTTP anchor on loopback: keeps every checkpoint POSTed to it, returns them on GET."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: AnchorServer

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != self.server.expected_auth:
            self._answer(401, b'{"error": "unauthorized"}')
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.received.append(json.loads(body))
        self._answer(201, b'{"stored": true}')

    def do_GET(self) -> None:
        with self.server.lock:
            body = json.dumps({"checkpoints": self.server.received}).encode()
        self._answer(200, body)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class AnchorServer(ThreadingHTTPServer):
    """Start with :meth:`start`, stop with :meth:`stop`; ``received`` holds what arrived."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.expected_auth = f"Bearer {token}" if token else None
        self._thread = threading.Thread(target=self.serve_forever, name="anchor", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/anchor"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)
