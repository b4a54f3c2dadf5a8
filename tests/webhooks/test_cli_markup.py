"""Stored event text is shown as text: Rich markup that reached a column never renders."""

from __future__ import annotations

from sqlalchemy import update

from billwatch.config import Settings
from billwatch.db import Database
from billwatch.webhooks import store
from billwatch.webhooks.models import EventSource, EventStatus, StripeEvent
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server
from tests.webhooks.test_cli import asgi, billwatch

__all__ = ["asgi"]  # the fixture, used by name below

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
        async with db.unit_of_work() as session:  # a handler's error quoting what it was sent
            row_id = await store.store(session, event, event, EventSource.WEBHOOK)
            await session.execute(update(StripeEvent).where(StripeEvent.id == row_id).values(
                status=EventStatus.FAILED, last_error=MARKUP_ERROR, attempts=1))
        listed = await billwatch(settings, "list", "--status", "failed")
        assert listed.exit_code == 0, listed.output
        assert "[link=https://evil.test/login]" in listed.output  # unescaped, Rich eats the tags
        assert "[bold]x" in listed.output
