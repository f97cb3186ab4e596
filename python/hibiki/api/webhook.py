"""Checking the webhooks a Hibiki server sends, in your own receiver.

With ``hibiki serve --api-secret SECRET --webhook-url URL`` the server POSTs
each event (:class:`hibiki.api.models.WebhookEvent`) as JSON to ``URL`` with

* ``X-Signature``: the hex HMAC-SHA256 of the exact body bytes, keyed with the
  API secret (absent when the server has no secret: then nothing is signed);
* ``X-Webhook-Id``: the event's ``id``, the same on every retry;
* ``X-Webhook-Attempt``: 1 for the first delivery, 2, 3... for retries;
* ``X-Api-Key``: the server's API key, when it has one.

Answer with any 2xx status once the event is handled (or was already
handled: compare ``X-Webhook-Id`` with ids you have seen, because a delivery
whose answer got lost is sent again). Anything else, or no answer in time,
makes the server retry later with a growing delay.

Always verify the signature over the *raw* body, before parsing it: a JSON
library that re-serialises the body would not reproduce the same bytes.

A FastAPI (or Starlette) receiver::

    from fastapi import FastAPI, HTTPException, Request
    from hibiki.api.webhook import WebhookSignatureError, parse_webhook

    app = FastAPI()
    API_SECRET = "..."  # the server's --api-secret
    seen: set[str] = set()

    @app.post("/hibiki-webhook")
    async def hibiki_webhook(request: Request) -> dict[str, bool]:
        body = await request.body()
        try:
            event = parse_webhook(body, request.headers.get("x-signature", ""), API_SECRET)
        except WebhookSignatureError:
            raise HTTPException(401, "bad signature") from None
        except ValueError:
            raise HTTPException(400, "not a webhook event") from None
        if event.id not in seen:  # a retry of an event already handled
            seen.add(event.id)
            if event.type == "call.participant_joined":
                print(event.call_cid, event.participant.user_id, "joined")
        return {"ok": True}
"""

from __future__ import annotations

import hashlib
import hmac

from hibiki.api.models import WebhookEvent

__all__ = ["SIGNATURE_HEADER", "WebhookSignatureError", "parse_webhook", "sign_webhook", "verify_webhook"]

SIGNATURE_HEADER = "X-Signature"
"""The header holding a webhook's signature."""


class WebhookSignatureError(ValueError):
    """The webhook's ``X-Signature`` does not match its body and the API secret."""


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    # A str body is accepted for convenience (frameworks that decoded it); it
    # must be the body as received, which the server sends as UTF-8.
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def sign_webhook(body: bytes | bytearray | memoryview | str, api_secret: str) -> str:
    """The ``X-Signature`` of ``body``: hex HMAC-SHA256 keyed with ``api_secret`` (64 lower-case hex digits)."""
    if not api_secret:
        raise ValueError("the API secret must not be empty")
    return hmac.new(api_secret.encode("utf-8"), _as_bytes(body), hashlib.sha256).hexdigest()


def verify_webhook(body: bytes | bytearray | memoryview | str, signature: str | None, api_secret: str) -> bool:
    """True when ``signature`` (the ``X-Signature`` header) is ``body``'s signature with ``api_secret``.

    The comparison takes constant time, so a forger learns nothing from how
    long a wrong guess took. A missing, empty or malformed signature is
    simply False. Hex digits are accepted in either case.
    """
    if not api_secret:
        raise ValueError("the API secret must not be empty")
    if not isinstance(signature, str):
        return False
    given = signature.strip().lower()
    try:
        given_bytes = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    expected = sign_webhook(body, api_secret).encode("ascii")
    return hmac.compare_digest(given_bytes, expected)


def parse_webhook(body: bytes | bytearray | memoryview | str, signature: str | None, api_secret: str) -> WebhookEvent:
    """Verify ``body`` against ``signature`` and parse it into a :class:`~hibiki.api.models.WebhookEvent`.

    Raises :class:`WebhookSignatureError` when the signature is wrong or
    missing (the body is not even parsed then), and pydantic's
    ``ValidationError`` (also a ``ValueError``) when the body is not a
    webhook event.
    """
    raw = _as_bytes(body)
    if not verify_webhook(raw, signature, api_secret):
        raise WebhookSignatureError("the webhook signature does not match the body and the API secret")
    return WebhookEvent.model_validate_json(raw)
