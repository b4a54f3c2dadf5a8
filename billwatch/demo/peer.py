"""The customer's side of Stripe, played against the local Stripe peer (localstripe).

billwatch itself only talks to Stripe through its payments gateway. What a real customer does on
Stripe's hosted pages (enter a card, pay, have a renewal charged, see a card declined) has no
billwatch API, so the demo does it here, directly against the peer's REST API, the way Stripe's
own systems would. Test cards are Stripe's published test numbers; none is logged or stored.
"""

from __future__ import annotations

from typing import Any

import httpx

GOOD_CARD = "4242424242424242"
DECLINING_CARD = "4000000000000341"
"""Attaching succeeds, every charge is declined: a card that was fine at checkout and fails later."""


class PeerError(RuntimeError):
    """The Stripe peer refused a call the demo relies on."""


def _form(prefix: str, value: Any, into: dict[str, str]) -> dict[str, str]:
    """Stripe's form encoding of nested parameters (``items[0][plan]=...``)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _form(f"{prefix}[{key}]" if prefix else str(key), inner, into)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _form(f"{prefix}[{index}]", inner, into)
    elif value is not None:
        into[prefix] = str(value).lower() if isinstance(value, bool) else str(value)
    return into


class StripePeer:
    """A thin async client for the peer: cards, subscriptions, invoices, webhook registration."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=30,
                                       headers={"Authorization": f"Bearer {api_key}"})

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
        data = _form("", params or {}, {}) if method != "GET" else None
        response = await self._http.request(method, path, data=data,
                                            params=_form("", params or {}, {}) if method == "GET" else None)
        if response.status_code >= 400:
            raise PeerError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        found: dict[str, Any] = response.json()  # every Stripe object is a JSON object
        return found

    async def register_webhook(self, name: str, *, url: str, secret: str,
                               events: list[str] | None = None) -> None:
        """Have the peer sign and POST its events to ``url`` (its ``/_config/webhooks`` route)."""
        body: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            body["events"] = events
        response = await self._http.post(f"/_config/webhooks/{name}", json=body)
        if response.status_code >= 400:
            raise PeerError(f"webhook registration refused: {response.status_code}")

    async def add_card(self, customer: str, number: str) -> str:
        """Attach a card and make it the customer's default for invoices."""
        method = await self._call("POST", "/v1/payment_methods", {
            "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2040, "cvc": "123"}})
        await self._call("POST", f"/v1/payment_methods/{method['id']}/attach", {"customer": customer})
        await self._call("POST", f"/v1/customers/{customer}",
                         {"invoice_settings": {"default_payment_method": method["id"]}})
        return str(method["id"])

    async def subscribe(self, customer: str, price: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Start a subscription; the peer charges the first invoice at once."""
        return await self._call("POST", "/v1/subscriptions", {
            "customer": customer, "items": [{"plan": price}], "metadata": metadata})

    async def subscription(self, sub_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/subscriptions/{sub_id}")

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/invoices/{invoice_id}")

    async def payment_intent(self, pi_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/payment_intents/{pi_id}")

    async def charge(self, charge_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/charges/{charge_id}")

    async def next_invoice(self, customer: str, sub_id: str) -> dict[str, Any]:
        """The subscription's next period's invoice (a renewal), still a draft."""
        return await self._call("POST", "/v1/invoices", {"customer": customer, "subscription": sub_id})

    async def pay(self, invoice_id: str) -> dict[str, Any]:
        """Attempt to charge an open invoice with the customer's default card."""
        return await self._call("POST", f"/v1/invoices/{invoice_id}/pay")

    async def end_subscription(self, sub_id: str) -> None:
        """End a subscription at the peer (period over, or dunning exhausted)."""
        await self._call("DELETE", f"/v1/subscriptions/{sub_id}")
