"""Stored event text is shown as text: Rich markup signed into an event never renders."""

from __future__ import annotations

from billwatch.config import Settings
from billwatch.db import Database
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server
from tests.webhooks.test_cli import asgi, billwatch

__all__ = ["asgi"]  # the fixture, used by name below

MARKUP_TYPE = "[link=https://evil.test/login]invoice.paid[/link]"


class TestListEscapesMarkup:
    async def test_a_signed_type_with_markup_is_listed_literally(
            self, asgi: Server, db: Database, settings: Settings) -> None:
        event = se.event(MARKUP_TYPE, {"id": "prod_markup", "object": "product"},
                         event_id="evt_[bold]x[/bold]")
        assert (await asgi.deliver(event)).status_code == 200  # stored as ignored
        listed = await billwatch(settings, "list")
        assert listed.exit_code == 0, listed.output
        assert MARKUP_TYPE in listed.output  # unescaped, Rich would eat the tags
        assert "evt_[bold]x[/bold]" in listed.output
        replayed = await billwatch(settings, "replay", "evt_[bold]x[/bold]")
        assert "evt_[bold]x[/bold]" in replayed.output and MARKUP_TYPE in replayed.output
