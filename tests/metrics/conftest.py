from __future__ import annotations

from collections.abc import Iterator

import pytest

from billwatch.metrics import billing
from tests.support import test_settings


@pytest.fixture(autouse=True)
def billing_metrics_switch_restored() -> Iterator[None]:
    """A test that turns billing metrics off must not leave them off for the next one."""
    yield
    billing.configure(test_settings("sqlite+aiosqlite://", "http://127.0.0.1:9"))
