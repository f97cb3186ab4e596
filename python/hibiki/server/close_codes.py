"""WebSocket close codes and reasons the signaling server uses.

This table is the contract; tests assert it.

======  ==========================================  ===============================================
Code    Reason                                      When
======  ==========================================  ===============================================
1000    ``TYPE-DISCONNECT``                         the client sent ``{"type":"disconnect"}``
1000    ``DISCONNECTED-API``                        a Disconnect* action of the HTTP API
                                                    (``hibiki.server.api``)
1000    ``LIFETIME-EXPIRED``                        the ``connection_lifetime`` the auth (JWT
                                                    claim or webhook) gave the connection is over
1000    ``CALL-ENDED``                              the connection's call was ended through the
                                                    ``/v1`` API (a ``call.ended`` notify comes first)
1000    ``REDIRECT``                                right after ``{"type":"redirect"}``: the client
                                                    reconnects to its ``location`` (§3.4)
1001    ``server shutting down``                    a session still open when the server stops
                                                    (after uvicorn's graceful timeout)
1007    (uvicorn's text)                            a text frame that is not UTF-8 (WebSocket layer)
1008    ``client is not reading its messages``      thousands of messages queued for a client that
                                                    does not read its socket
1009    ``message too big (N bytes > LIMIT)``       a message over ``max_message_bytes``; frames over
                                                    ``ServerSettings.ws_max_size`` are cut by the
                                                    WebSocket layer, also with 1009
1011    ``internal error``                          a bug in the server while handling this session
                                                    (logged with a traceback; other sessions go on)
1012    (none)                                      the server is shutting down (sent by uvicorn)
4401    a human reason, see below                   authentication failed: ``metadata.access_token``
                                                    missing or invalid (``invalid access token:
                                                    ...``), or the auth webhook answered
                                                    ``allowed: false`` (its ``reason``, else
                                                    ``rejected by the auth webhook``)
4403    ``call ended`` / ``call is full (N             the channel is a stored call (``/v1``) that
        participants)``                             was ended, or that already has its
                                                    ``max_participants``
4490    a human reason, see below                   invalid signaling: bad JSON, bad/unknown/
                                                    unexpected message, invalid ``connect`` field,
                                                    binary frame, ``connect timeout``,
                                                    ``answer timeout``, an SDP or
                                                    codec the data plane refused (its message),
                                                    ``redirect loop: ...`` (a connect that was
                                                    already redirected is placed elsewhere again)
4491    ``ping timeout``                            no ``pong`` for ``ping_timeout`` seconds
4492    ``media connection closed: <why>``          the data plane closed the connection (ICE or
                                                    DTLS failed or timed out)
4492    ``media connection timeout: ...``           ICE/DTLS not up ``answer_timeout`` s after the
                                                    answer
4503    ``auth webhook failed: <why>``              the auth webhook could not be asked: timeout,
                                                    connection error, non-200 status, or a body
                                                    that is not a valid answer. Not the client's
                                                    fault; retrying later may work
======  ==========================================  ===============================================

4490 is what Sora uses for signaling validation errors (sora-signaling.md §12.1).
Sora's own codes for authentication failures are not known (sora-signaling.md
§17.1); 4401 and 4503 follow the HTTP status they resemble (401 Unauthorized,
503 Service Unavailable) so a client can tell "fix your token" from "try
again later". The official client reports both in ``on_disconnect`` as
``WEBSOCKET_ONCLOSE`` with a message that ends ``wscode=4401 wsreason=<reason>``.
Failures never use 1000: the official client maps 1000 to "closed successfully".
Reasons are cut to 123 bytes, the most a close frame can carry.
"""

from __future__ import annotations

NORMAL = 1000
GOING_AWAY = 1001
INVALID_UTF8 = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
AUTH_REJECTED = 4401
CALL_REFUSED = 4403
SIGNALING_ERROR = 4490
PING_TIMEOUT = 4491
MEDIA_CLOSED = 4492
AUTH_UNAVAILABLE = 4503

TYPE_DISCONNECT = "TYPE-DISCONNECT"
DISCONNECTED_API = "DISCONNECTED-API"
LIFETIME_EXPIRED = "LIFETIME-EXPIRED"
CALL_ENDED = "CALL-ENDED"
REDIRECT = "REDIRECT"
MAX_REASON_BYTES = 123


def truncate_reason(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """Cut ``reason`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    data = reason.encode("utf-8")
    if len(data) <= limit:
        return reason
    # Leave room for an ellipsis so a reader can tell the text was cut.
    cut = data[: limit - 3].decode("utf-8", errors="ignore")
    return cut + "..."
