"""Baseline (a): an ASGI endpoint that reads the request body and answers 200, nothing else.

The ceiling of the server, the HTTP stack and the load generator on this machine.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

ANSWER = b'{"received":true}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete" if done else "lifespan.startup.complete"})
            if done:
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})
