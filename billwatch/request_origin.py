"""Who sent a request, as far as can be told honestly: the client IP and a safe request id.

Both end up in every audit row (``client_ip``, ``request_id``) and log line, so neither may carry
whatever a client typed. The client IP is the TCP peer's address, parsed as an IP address; a
``X-Forwarded-For`` header is believed only when that peer is one of the configured trusted
proxies, and only when every hop in it parses as an IP address (otherwise it is ignored and the
peer stands). A supplied ``X-Request-ID`` is kept only when it is a short ASCII token that
cannot hide a card number, a secret or a control character; otherwise a fresh id is used.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Sequence

from billwatch.redaction import redact_text

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FORWARDED_HOPS = 20
"""More hops than any real proxy chain: a longer header is ignored rather than walked."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SEPARATORS = re.compile(r"[._]")


def parse_ip(text: str | None) -> IPAddress | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4), or None when it is not exactly one.

    Zone ids (``fe80::1%eth0``) are refused: they are free text after the ``%``.
    """
    if not text or len(text) > 45:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_ip(peer: str | None, forwarded: Iterable[str],
              trusted_proxies: Sequence[IPNetwork]) -> str | None:
    """The client address: the peer's, or the nearest untrusted hop a trusted peer forwarded."""
    address = parse_ip(peer)
    if address is None or not _trusted(address, trusted_proxies):
        return str(address) if address is not None else None
    hops = [hop.strip() for value in forwarded for hop in value.split(",")]
    if not hops or len(hops) > MAX_FORWARDED_HOPS:
        return str(address)
    parsed = [parse_ip(hop) for hop in hops]
    if any(hop is None for hop in parsed):
        return str(address)  # one unreadable hop makes the whole header untrustworthy
    client = address
    for hop in reversed(parsed):  # nearest hop first; stop at the first we do not trust
        assert hop is not None
        client = hop
        if not _trusted(hop, trusted_proxies):
            break
    return str(client)


def fresh_request_id() -> str:
    """A new request id the redactor leaves whole.

    A uuid4's hex holds a Luhn-valid run of 13+ digits about once in a few hundred ids; stored in
    the redacted ``request_id`` column it would be masked and no longer find its log lines.
    """
    while True:
        candidate = uuid.uuid4().hex
        if safe_request_id(candidate) == candidate:
            return candidate


def safe_request_id(supplied: str | None) -> str | None:
    """``supplied`` when it is fit for the audit trail, else None (the caller mints one)."""
    if not supplied or not _REQUEST_ID.fullmatch(supplied):
        return None
    # the redactor's card rule reads digits split by spaces or dashes; ids may use . and _ too
    for variant in (supplied, _SEPARATORS.sub("-", supplied)):
        if redact_text(variant) != variant:
            return None
    return supplied
