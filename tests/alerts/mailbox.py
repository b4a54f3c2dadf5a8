"""A real SMTP server (aiosmtpd) on a fixed loopback port that tests can stop and start again."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support import free_port


@dataclass(frozen=True)
class Received:
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content())

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.box.lock:  # the whole message is here: it counts as a copy received
            self.box.received.append(Received(list(envelope.rcpt_tos), message))
        if self.box.reply_delay:  # a slow server: it holds the final reply to DATA back
            await asyncio.sleep(self.box.reply_delay)
        return "250 OK"


class Mailbox:
    """Collects what the SMTP server accepted; ``stop()`` makes the port refuse connections."""

    def __init__(self, *, reply_delay: float = 0.0) -> None:
        self.reply_delay = reply_delay
        self.port = free_port()
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self._controller: Controller | None = None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def messages(self, where: Callable[[Received], bool] = lambda _m: True) -> list[Received]:
        with self.lock:
            return [m for m in self.received if where(m)]

    async def wait_for(self, count: int, where: Callable[[Received], bool] = lambda _m: True,
                       within: float = 20.0) -> list[Received]:
        """Poll until at least ``count`` matching messages arrived (or fail at the deadline)."""
        def arrived() -> list[Received] | None:
            found = self.messages(where)
            return found if len(found) >= count else None

        found: list[Received] = await wait_until(arrived, within=within, what=f"{count} mail(s)")
        return found


async def wait_until(condition: Callable[[], Any], *, within: float = 20.0,
                     what: str = "condition") -> Any:
    """Return the first truthy value of ``condition()``, polling for ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_until_async(condition: Callable[[], Any], *, within: float = 20.0,
                           what: str = "condition") -> Any:
    """Like :func:`wait_until` for a condition that is a coroutine function."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)
