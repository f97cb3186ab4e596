"""Identifiers: connection and session ids in Sora's format.

Sora's ids are a UUIDv4 written in Crockford Base32: 26 upper-case characters
(e.g. ``WCJC78EWK935N7P7Z8FYAKFW9M``). 26 characters hold 130 bits; the 128 bits
of the UUID are left-aligned (like RFC 4648 base32 without padding), so the last
character carries 3 bits followed by two zero bits. Sora's own example ids fit
that layout (first character unrestricted, last one a multiple of 4). Clients
rely only on the length (the messaging header is exactly 26 bytes).
"""

from __future__ import annotations

import uuid

CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH = 26


def crockford_b32encode(data: bytes) -> str:
    """Encode bytes in Crockford Base32, left-aligned, no padding, upper case."""
    nbits = len(data) * 8
    nchars = -(-nbits // 5)
    value = int.from_bytes(data, "big") << (nchars * 5 - nbits)
    out = []
    for shift in range((nchars - 1) * 5, -1, -5):
        out.append(CROCKFORD_ALPHABET[(value >> shift) & 0x1F])
    return "".join(out)


def new_id() -> str:
    """A fresh 26-character id (UUIDv4 in Crockford Base32)."""
    return crockford_b32encode(uuid.uuid4().bytes)


def new_connection_id() -> str:
    """A fresh connection_id."""
    return new_id()


def new_session_id() -> str:
    """A fresh session_id (created when a channel goes from 0 to 1 connection)."""
    return new_id()
