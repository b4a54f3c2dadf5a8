"""Stored event text is shown as text: Rich markup that reached a column never renders."""

from __future__ import annotations

from billwatch.config import Settings
from billwatch.db import Database
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, stored_as_failed
from tests.webhooks.test_cli import billwatch

MARKUP_TYPE = "[link=https://evil.test/login]invoice.paid[/link]"
MARKUP_ERROR = "KeyError: [link=https://evil.test/login]click here[/link] [bold]x[/bold]"


class TestListEscapesMarkup:
    async def test_markup_in_a_signed_type_is_refused_at_the_boundary(
            self, asgi: Server, db: Database, settings: Settings) -> None:
        event = se.event(MARKUP_TYPE, {"id": "prod_markup", "object": "product"})
        assert (await asgi.deliver(event)).status_code == 400
        listed = await billwatch(settings, "list")
        assert listed.exit_code == 0 and "evil.test" not in listed.output

    async def test_stored_text_with_markup_is_listed_literally(
            self, db: Database, settings: Settings) -> None:
        event = se.event("invoice.paid", {"id": "in_markup", "object": "invoice"})
        await stored_as_failed(db, event, MARKUP_ERROR)  # a handler's error quoting its input
        listed = await billwatch(settings, "list", "--status", "failed")
        assert listed.exit_code == 0, listed.output
        assert "[link=https://evil.test/login]" in listed.output  # unescaped, Rich eats the tags
        assert "[bold]x" in listed.output
