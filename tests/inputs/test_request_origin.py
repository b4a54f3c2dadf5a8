"""Client IP and request id in the audit trail: parsed, forwarded only by trusted proxies, safe.

Refused requests are used because each writes exactly one audit row carrying the origin.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from billwatch.app import create_app
from billwatch.db import Database
from billwatch.request_origin import client_ip, fresh_request_id, parse_ip, safe_request_id
from tests.support import audit_rows
from tests.support import test_settings as make_settings

PEER = "203.0.113.7"
"""The TCP peer the test client connects from (see the ``client`` fixture)."""
FRESH_ID = re.compile(r"[0-9a-f]{32}")
PAN = "4242424242424242"


async def refused_origin(client: httpx.AsyncClient, db: Database,
                         headers: list[tuple[str, bytes]]) -> tuple[str | None, str | None, str]:
    """(client_ip, request_id) of the one row a refused request writes, and the echoed id."""
    response = await client.get("/admin/audit-logs", headers=headers)
    assert response.status_code == 401
    rows = await audit_rows(db)
    assert len(rows) == 1
    return rows[0].client_ip, rows[0].request_id, response.headers["x-request-id"]


@pytest.fixture
async def behind_proxy(database_url: str, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """billwatch trusting the test client's network as its reverse proxy."""
    settings = make_settings(database_url, "http://127.0.0.1:9",
                             trusted_proxies="203.0.113.0/24, 2001:db8::/32")
    app = create_app(settings, database=db)
    transport = httpx.ASGITransport(app=app, client=(PEER, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class TestUntrustedPeer:
    @pytest.mark.parametrize("forwarded", [b"198.51.100.23", PAN.encode(), b"sk_live_abcdefgh"])
    async def test_forwarded_for_is_ignored(self, forwarded: bytes, client: httpx.AsyncClient,
                                            db: Database) -> None:
        ip, _, _ = await refused_origin(client, db, [("X-Forwarded-For", forwarded)])
        assert ip == PEER

    @pytest.mark.parametrize("supplied", [
        PAN.encode(), b"4242-4242-4242-4242", b"4242.4242.4242.4242", b"4242_4242_4242_4242",
        b"sk_live_abcdefghijkl", b"whsec_abcdefgh", b"abc\x85def", b"line\nbreak", b"a" * 65,
        b"caf\xc3\xa9", b"-starts-with-a-dash", b"has space"])
    async def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(
            self, supplied: bytes, client: httpx.AsyncClient, db: Database) -> None:
        _, stored, echoed = await refused_origin(client, db, [("X-Request-ID", supplied)])
        assert stored is not None and FRESH_ID.fullmatch(stored)
        assert echoed == stored

    async def test_a_safe_request_id_is_kept(self, client: httpx.AsyncClient,
                                             db: Database) -> None:
        _, stored, echoed = await refused_origin(client, db, [("X-Request-ID", b"req-2026.12_01")])
        assert stored == echoed == "req-2026.12_01"


class TestTrustedProxy:
    @pytest.mark.parametrize(("forwarded", "expected"), [
        ([b"198.51.100.23"], "198.51.100.23"),
        ([b"198.51.100.23, 203.0.113.9"], "198.51.100.23"),  # our own second proxy hop
        ([b"192.0.2.1, 198.51.100.23"], "198.51.100.23"),  # the nearest untrusted hop wins
        ([b"192.0.2.1", b"198.51.100.23"], "198.51.100.23"),  # two headers read as one list
        ([b"2001:DB8:0:0:0:0:0:1, 2001:0db9::0001"], "2001:db9::1"),
        ([b"::ffff:198.51.100.23"], "198.51.100.23"),
        ([PAN.encode()], PEER),
        ([b"198.51.100.23, 4242 4242 4242 4242"], PEER),  # one bad hop discards the header
        ([b"fe80::1%4242424242424242"], PEER),
        ([b"198.51.100.23:443"], PEER),
        ([b""], PEER),
    ])
    async def test_forwarded_for_names_the_client_only_when_every_hop_parses(
            self, forwarded: list[bytes], expected: str, behind_proxy: httpx.AsyncClient,
            db: Database) -> None:
        ip, _, _ = await refused_origin(behind_proxy, db,
                                        [("X-Forwarded-For", value) for value in forwarded])
        assert ip == expected


class TestParsing:
    def test_settings_read_a_comma_separated_cidr_list(self) -> None:
        settings = make_settings("sqlite+aiosqlite://", "http://127.0.0.1:9",
                                 trusted_proxies="10.0.0.0/8,::1")
        assert settings.trusted_proxies == [ipaddress.ip_network("10.0.0.0/8"),
                                            ipaddress.ip_network("::1/128")]
        assert make_settings("sqlite+aiosqlite://", "http://x").trusted_proxies == []

    def test_a_malformed_cidr_is_refused_at_start(self) -> None:
        with pytest.raises(ValueError, match="trusted_proxies"):
            make_settings("sqlite+aiosqlite://", "http://x", trusted_proxies="10.0.0.0/33")

    @pytest.mark.parametrize(("text", "expected"), [
        ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::ffff:10.1.2.3", "10.1.2.3"),
        ("fe80::1%eth0", None), ("localhost", None), ("", None), (None, None),
        ("1.2.3.4.5", None), ("1" * 46, None)])
    def test_parse_ip(self, text: str | None, expected: str | None) -> None:
        parsed = parse_ip(text)
        assert (str(parsed) if parsed is not None else None) == expected

    def test_a_peer_that_is_not_an_ip_is_not_stored(self) -> None:
        assert client_ip("testclient", ["198.51.100.23"], []) is None
        assert client_ip(PAN, [], []) is None

    def test_a_forwarded_chain_longer_than_any_proxy_setup_is_ignored(self) -> None:
        proxies = [ipaddress.ip_network("10.0.0.0/8")]
        assert client_ip("10.0.0.1", [", ".join(["10.0.0.2"] * 21)], proxies) == "10.0.0.1"
        assert client_ip("10.0.0.1", [", ".join(["10.0.0.2"] * 3)], proxies) == "10.0.0.2"

    def test_request_id_pattern(self) -> None:
        assert safe_request_id("0f8e2c1a-5b7d-4e3f-9a1b-2c3d4e5f6a7b") is not None
        assert safe_request_id(None) is None and safe_request_id("") is None

    def test_a_fresh_request_id_is_never_masked(self) -> None:
        # Plain uuid4 hex is masked about once in a few hundred ids (a Luhn-valid digit run):
        # 20,000 of them would all but surely include one.
        from billwatch.redaction import redact_text

        ids = [fresh_request_id() for _ in range(20_000)]
        assert all(redact_text(i) == i and safe_request_id(i) == i for i in ids)
        assert len(set(ids)) == len(ids) and {len(i) for i in ids} == {32}
