"""Two narrow test peers standing between billwatch and the Stripe peer.

- :class:`SilentStripe` accepts connections and never answers: a hanging Stripe.
- :class:`AnswerDroppingProxy` forwards each request to the real Stripe peer, lets it act, and
  then closes the connection without passing the answer back: a lost response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class _Listening:
    """A local TCP server's address, once it listens."""

    _server: asyncio.Server | None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


class SilentStripe(_Listening):
    """A TCP server that accepts and reads, and never writes a byte back."""

    def __init__(self) -> None:
        self.connections = 0
        self.accepted = asyncio.Event()
        self._server = None
        self._held: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.accepted.set()
        self._held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentStripe]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            yield self
        finally:
            for writer in self._held:
                writer.close()
            self._server.close()
            await self._server.wait_closed()


class AnswerDroppingProxy(_Listening):
    """Forwards one HTTP/1.1 request per connection upstream, then drops the upstream's answer."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.forwarded = 0
        self.answered_upstream = asyncio.Event()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            lines = [line for line in head.rstrip(b"\r\n").split(b"\r\n")
                     if not line.lower().startswith(b"connection:")]
            head = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"
            up_writer.write(head + body)
            await up_writer.drain()
            await up_reader.read()  # the upstream acted and answered in full ...
            up_writer.close()
            self.forwarded += 1
            self.answered_upstream.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()  # ... and the answer never reaches the client

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AnswerDroppingProxy]:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()
