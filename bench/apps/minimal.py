"""Baseline (b): the least a webhook endpoint can do and still be correct, on bare asyncpg.

Verify the signature with the Stripe SDK's helper, parse with ``json.loads``, and in one
transaction insert the event row (unique event id) and one audit row. No framework, no ORM: the
ceiling for this shape of work, against which billwatch's full path is compared.
Configuration comes from ``BENCH_PG_DSN`` and ``BENCH_WEBHOOK_SECRET``; the benchmark creates
:data:`SCHEMA` before starting the workers.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import asyncpg
import stripe
from starlette.types import Receive, Scope, Send

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_events (
    id uuid PRIMARY KEY, stripe_event_id text NOT NULL UNIQUE, type text NOT NULL,
    stripe_created timestamptz NOT NULL, payload jsonb NOT NULL, status text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS bench_audit (
    id uuid PRIMARY KEY, occurred_at timestamptz NOT NULL DEFAULT now(), event_type text NOT NULL,
    outcome text NOT NULL, stripe_event_id text, stripe_customer_id text,
    stripe_invoice_id text, metadata jsonb NOT NULL);
"""
INSERT_EVENT = """
INSERT INTO bench_events (id, stripe_event_id, type, stripe_created, payload, status)
VALUES ($1, $2, $3, to_timestamp($4), $5::jsonb, 'processed')
ON CONFLICT (stripe_event_id) DO NOTHING RETURNING id"""
INSERT_AUDIT = """
INSERT INTO bench_audit (id, event_type, outcome, stripe_event_id, stripe_customer_id,
                         stripe_invoice_id, metadata)
VALUES ($1, 'billing.webhook.received', 'success', $2, $3, $4, $5::jsonb)"""

_state: dict[str, Any] = {}


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _store(event: dict[str, Any], text: str) -> None:
    obj = event["data"]["object"]
    pool: asyncpg.Pool = _state["pool"]
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(INSERT_EVENT, uuid.uuid4(), event["id"], event["type"],
                                       event["created"], text)
        if inserted is not None:
            await conn.execute(INSERT_AUDIT, uuid.uuid4(), event["id"], obj.get("customer"),
                               obj.get("id"), json.dumps({"type": event["type"],
                                                          "amount_paid": obj.get("amount_paid")}))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = await _body(receive)
    if scope["method"] != "POST":
        await _answer(send, 200, b"{}")
        return
    headers = dict(scope["headers"])
    text = body.decode()
    try:
        stripe.WebhookSignature.verify_header(text, headers.get(b"stripe-signature", b"").decode(),
                                              _state["secret"], 300)
    except stripe.SignatureVerificationError:
        await _answer(send, 400, b'{"error":"invalid_signature"}')
        return
    await _store(json.loads(text), text)
    await _answer(send, 200, b'{"received":true}')


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _state["secret"] = os.environ["BENCH_WEBHOOK_SECRET"]
            _state["pool"] = await asyncpg.create_pool(os.environ["BENCH_PG_DSN"], min_size=4,
                                                       max_size=20)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _state["pool"].close()
            await send({"type": "lifespan.shutdown.complete"})
            return
