"""The CLI refuses e-mails and names the API would refuse, with a reason and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from billwatch.accounts import service as accounts
from billwatch.accounts.models import Role, User
from billwatch.db import Database
from billwatch.errors import Unprocessable

BAD_EMAILS = ["pat@example.test\nBcc: all@example.test", "pat@example.test\r", "pat @example.test",
              "no-at-sign.example.test", "pat@localhost", "pat@exa\x00mple.test",
              "pat\u202e@example.test", "[red]pat[/red]@example.test", "a" * 65 + "@example.test"]
BAD_NAMES = ["Ada\nLovelace", "Ada\x1b[31m", "\u202eadA", "Ada\u200bLovelace", "Ada\x00", "   ",
             "x" * 201]


class TestTheRules:
    async def test_bad_emails_and_names_are_refused_and_nothing_stored(self, db: Database) -> None:
        for email in BAD_EMAILS:
            with pytest.raises(Unprocessable) as refused:
                async with db.unit_of_work() as session:
                    await accounts.create_user(session, email=email, name="Ada", role=Role.PATIENT)
            assert refused.value.code == "invalid_email", email
        for name in BAD_NAMES:
            with pytest.raises(Unprocessable) as refused:
                async with db.unit_of_work() as session:
                    await accounts.create_user(session, email="ada@example.test", name=name,
                                               role=Role.PATIENT)
            assert refused.value.code == "invalid_name", repr(name)
        with pytest.raises(Unprocessable):
            async with db.unit_of_work() as session:
                await accounts.create_organization(session, name="Clinic\u202e")
        async with db.sessionmaker() as session:
            assert (await session.scalars(select(User))).all() == []

    async def test_ordinary_ones_pass(self, db: Database) -> None:
        async with db.unit_of_work() as session:
            user = await accounts.create_user(session, email="Zoe.O'Neil+billing@Clinic-1.example",
                                              name="  Zoë O'Neil-Åström  ", role=Role.PATIENT)
        assert user.email == "zoe.o'neil+billing@clinic-1.example"
        assert user.name == "Zoë O'Neil-Åström"


def cli(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update({"BILLWATCH_ENV": "development", "BILLWATCH_DATABASE_URL": database_url,
                "BILLWATCH_LOG_LEVEL": "WARNING"})
    return subprocess.run([str(Path(sys.executable).parent / "billwatch"), *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


class TestTheCommand:
    @pytest.mark.parametrize(("email", "name", "reason"), [
        ("pat@example.test\nBcc: all@example.test", "Pat", "e-mail"),
        ("pat@example.test", "Pat\x1b]8;;https://evil.test\x07", "name contains a control"),
        ("pat@example.test", "Pat\u202e", "name contains a control"),
    ], ids=["newline-email", "escape-name", "bidi-name"])
    async def test_users_create_refuses(self, db: Database, database_url: str, email: str,
                                        name: str, reason: str) -> None:
        done = cli(["users", "create", email, "--name", name], database_url)
        assert done.returncode == 1, done.stdout + done.stderr
        assert reason in done.stderr and "Traceback" not in done.stderr
        async with db.sessionmaker() as session:
            assert (await session.scalars(select(User))).all() == []

    async def test_token_refuses_a_bad_email_and_escapes_an_unknown_one(
            self, db: Database, database_url: str) -> None:
        bad = cli(["token", "ada@example.test\nX: y"], database_url)
        assert bad.returncode == 1 and "e-mail" in bad.stderr
        unknown = cli(["token", "[blink]ada[/blink]@example.test"], database_url)
        assert unknown.returncode == 1, unknown.stderr
