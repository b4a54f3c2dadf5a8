"""A local SMTP server that keeps every alert e-mail as a file, so the demo can show where they went.

billwatch sends alerts through real SMTP; on a laptop nothing should leave the machine, so the
demo points billwatch at this sink (aiosmtpd, in a thread of the demo process) and writes each
message to ``<folder>/NNN-<subject>.eml`` as it arrives.
"""

from __future__ import annotations

import re
import threading
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _FolderHandler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.subjects: list[str] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content: bytes = envelope.content
        subject = str(make_header(decode_header(message_from_bytes(content).get("Subject", ""))))
        with self._lock:
            self.subjects.append(subject)
            number = len(self.subjects)
        slug = re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")[:60] or "no-subject"
        (self.folder / f"{number:03d}-{slug}.eml").write_bytes(content)
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on loopback writing each received message into ``folder``."""

    def __init__(self, folder: Path, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = port
        self._handler = _FolderHandler(folder)
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=port)

    @property
    def subjects(self) -> list[str]:
        return list(self._handler.subjects)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
