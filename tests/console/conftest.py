"""Console fixtures: billwatch served by uvicorn, a real SMTP server, Debian's Chromium headless."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright

from billwatch.accounts.models import Role, User
from billwatch.app import create_app
from billwatch.config import Settings
from billwatch.db import Database
from tests.alerts.mailbox import Mailbox, wait_until
from tests.support import REPO, Factory, LocalStripe, free_port, test_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "var" / "test-artifacts" / "console"
LINK = re.compile(r"http://127\.0\.0\.1:\d+/console/sign-in/[A-Za-z0-9_\-]+")


@pytest.fixture(scope="session")
def console_mail() -> Iterator[Mailbox]:
    box = Mailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (make test installs it)")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS,
                                                    headless=True)
        yield launched
        await launched.close()


@dataclass
class Console:
    url: str
    settings: Settings
    db: Database
    factory: Factory
    mail: Mailbox
    page: Page

    async def sign_in(self, user: User, *, shot: str | None = None) -> None:
        """Ask for a link on the sign-in page, read it from the mail, confirm it."""
        before = len(self.mail.messages(lambda m: user.email in m.rcpt_tos))
        await self.page.goto(f"{self.url}/console/sign-in")
        await self.page.get_by_label("Admin e-mail address").fill(user.email)
        await self.page.get_by_role("button", name="Send me a sign-in link").click()
        await self.page.get_by_text("a sign-in link is on its way").wait_for()
        mails = await self.mail.wait_for(before + 1, lambda m: user.email in m.rcpt_tos)
        link = LINK.search(mails[-1].text)
        assert link is not None, mails[-1].text
        await self.page.goto(link.group(0))
        await self.page.get_by_role("button", name="Sign in").click()
        await self.page.get_by_role("heading", name="Overview").wait_for()
        if shot:
            await self.screenshot(shot)

    async def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
async def console(db: Database, database_url: str, localstripe: LocalStripe, catalogue_synced: None,
                  console_mail: Mailbox, browser: Browser) -> AsyncIterator[Console]:
    console_mail.clear()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = test_settings(database_url, localstripe.url, console_base_url=url,
                             smtp_host="127.0.0.1", smtp_port=console_mail.port,
                             smtp_from="billwatch@example.test", smtp_timeout_seconds=5)
    app = create_app(settings, database=db)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    import asyncio

    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="uvicorn to start")
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield Console(url, settings, db, Factory(db, settings), console_mail, page)
    finally:
        await context.close()
        server.should_exit = True
        await asyncio.wait({task}, timeout=10)


async def admin(console: Console) -> User:
    return await console.factory.user(Role.ADMIN, name="Ada Admin")


def no_serious_violations(results: Any) -> list[str]:
    """axe-core's serious and critical findings, as readable lines (empty when clean)."""
    return [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
