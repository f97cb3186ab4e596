"""The server-side SDK: the ``/v1`` REST API, tokens, webhooks, and joining calls from asyncio.

::

    from hibiki.api import AsyncClient
    from hibiki.api.models import CallRequest, MemberRequest

    client = AsyncClient(api_key="key", api_secret="secret", base_url="http://127.0.0.1:5000")
    call = client.video.call("default", "standup")
    await call.get_or_create(data=CallRequest(created_by_id="alice",
                                              members=[MemberRequest(user_id="bob")]))
    token = client.create_token("bob", call_cids=[call.cid])   # for a browser or another app

    async with client.video.rtc_call("default", "standup").join("alice") as connection:
        async for event in connection:
            if event.participant_joined:
                print(event.participant_joined.user_id, "joined")

:class:`Client` is the same with blocking methods. Models are in
:mod:`hibiki.api.models`; :func:`verify_webhook` checks a webhook's signature.
Names load lazily: ``import hibiki.api`` does not load the media SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hibiki.api.tokens import create_server_token, create_token, decode_token

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.api.client import ApiError as ApiError
    from hibiki.api.client import AsyncCall as AsyncCall
    from hibiki.api.client import AsyncClient as AsyncClient
    from hibiki.api.client import Call as Call
    from hibiki.api.client import Client as Client
    from hibiki.api.rtc import CallConnection as CallConnection
    from hibiki.api.rtc import CallEnded as CallEnded
    from hibiki.api.rtc import CallEvent as CallEvent
    from hibiki.api.rtc import CustomEvent as CustomEvent
    from hibiki.api.rtc import DataMessage as DataMessage
    from hibiki.api.rtc import Participant as Participant
    from hibiki.api.rtc import RtcCall as RtcCall
    from hibiki.api.rtc import RtcPacket as RtcPacket
    from hibiki.api.rtc import TrackEvent as TrackEvent
    from hibiki.api.webhook import WebhookSignatureError as WebhookSignatureError
    from hibiki.api.webhook import parse_webhook as parse_webhook
    from hibiki.api.webhook import sign_webhook as sign_webhook
    from hibiki.api.webhook import verify_webhook as verify_webhook

__all__ = [
    "ApiError",
    "AsyncCall",
    "AsyncClient",
    "Call",
    "CallConnection",
    "CallEnded",
    "CallEvent",
    "Client",
    "CustomEvent",
    "DataMessage",
    "Participant",
    "RtcCall",
    "RtcPacket",
    "TrackEvent",
    "WebhookSignatureError",
    "create_server_token",
    "create_token",
    "decode_token",
    "models",
    "parse_webhook",
    "sign_webhook",
    "verify_webhook",
]

_EXPORTS = {
    "ApiError": "hibiki.api.client",
    "AsyncCall": "hibiki.api.client",
    "AsyncClient": "hibiki.api.client",
    "Call": "hibiki.api.client",
    "Client": "hibiki.api.client",
    "CallConnection": "hibiki.api.rtc",
    "CallEvent": "hibiki.api.rtc",
    "RtcCall": "hibiki.api.rtc",
    "Participant": "hibiki.api.rtc",
    "TrackEvent": "hibiki.api.rtc",
    "RtcPacket": "hibiki.api.rtc",
    "DataMessage": "hibiki.api.rtc",
    "CallEnded": "hibiki.api.rtc",
    "CustomEvent": "hibiki.api.rtc",
    "WebhookSignatureError": "hibiki.api.webhook",
    "parse_webhook": "hibiki.api.webhook",
    "sign_webhook": "hibiki.api.webhook",
    "verify_webhook": "hibiki.api.webhook",
}


def __getattr__(name: str) -> Any:
    if name == "models":
        return importlib.import_module("hibiki.api.models")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hibiki.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
