"""Background loops stop on their signal, and a stop is bounded even when a loop is stuck."""

from __future__ import annotations

import asyncio
import time

import pytest
from structlog.testing import capture_logs

from billwatch.background import stop_task, wait_until_set
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs.embedded import EmbeddedRunner
from tests.support import test_settings as make_settings


class TestWaitUntilSet:
    async def test_a_cancel_that_lands_with_the_wake_is_never_swallowed(self) -> None:
        """The 3.11 ``wait_for`` race (wake and cancel in one loop iteration) cannot recur."""
        for _ in range(200):
            event = asyncio.Event()

            async def loop(event: asyncio.Event = event) -> None:
                while True:
                    event.clear()
                    await wait_until_set(event, 5)

            task = asyncio.create_task(loop())
            await asyncio.sleep(0)
            event.set()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def test_it_reports_whether_the_event_was_set(self) -> None:
        event = asyncio.Event()
        assert await wait_until_set(event, 0.01) is False
        event.set()
        assert await wait_until_set(event, 5) is True


class TestStopTask:
    async def test_a_loop_that_ignores_cancellation_is_abandoned_within_the_deadline(self) -> None:
        release = asyncio.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    continue  # the bug class: a cancellation eaten by the loop

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        started = time.monotonic()
        with capture_logs() as logs:
            await stop_task(task, grace_seconds=0.1, name="stubborn")
        assert time.monotonic() - started < 2
        assert [entry["event"] for entry in logs] == ["background_task_cancelled",
                                                      "background_task_abandoned"]
        release.set()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done()

    async def test_a_loop_that_honours_its_signal_ends_without_a_cancel(self) -> None:
        stop = asyncio.Event()

        async def polite() -> None:
            await stop.wait()

        task = asyncio.create_task(polite())
        stop.set()
        with capture_logs() as logs:
            await stop_task(task, grace_seconds=5, name="polite")
        assert task.done() and not task.cancelled() and logs == []


class TestEmbeddedRunnerStop:
    async def test_a_poke_landing_with_stop_does_not_keep_the_loop_alive(
            self, db: Database, database_url: str) -> None:
        settings: Settings = make_settings(database_url, "http://127.0.0.1:9",
                                           alert_poll_seconds=0.01, embedded_scheduler=False,
                                           shutdown_grace_seconds=5)
        for _ in range(20):
            runner = EmbeddedRunner(db, settings)
            await runner.start()
            await asyncio.sleep(0.02)
            ticks = runner.ticks
            runner.check_requested("nothing")  # a hand-off in the same iteration as the stop
            started = time.monotonic()
            await runner.stop()
            assert time.monotonic() - started < 5
            settled = runner.ticks
            await asyncio.sleep(0.05)
            assert runner.ticks == settled >= ticks  # no tick after stop() returned
