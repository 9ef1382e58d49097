"""Believable, deterministic identifiers: Mongo-style ids, chain addresses, txids, a QR image.

Everything is drawn from a caller-owned ``random.Random`` so the same seed gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from typing import Final

from tools.plisio.sandbox.catalog import COINS

_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def object_id(rng: random.Random, created_at: int) -> str:
    """24 hex digits like Plisio's ids (a Mongo ObjectId: 4-byte time, then 8 random bytes)."""
    return f"{created_at & 0xFFFFFFFF:08x}{rng.getrandbits(64):016x}"


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def address(rng: random.Random, psys_cid: str) -> str:
    """A deposit address in the coin's usual format (not a valid checksum: it is never used)."""
    chain = COINS[psys_cid].chain
    if psys_cid == "BTC":
        return "bc1q" + _pick(rng, _BECH32, 38)
    if psys_cid == "LTC":
        return "ltc1q" + _pick(rng, _BECH32, 38)
    if psys_cid == "DOGE":
        return "D" + _pick(rng, _B58, 33)
    if psys_cid == "BCH":
        return "bitcoincash:q" + _pick(rng, _BECH32, 41)
    if chain == "eth":
        return f"0x{rng.getrandbits(160):040x}"
    if chain == "trx":
        return "T" + _pick(rng, _B58, 33)
    if chain == "ton":
        return "UQ" + _pick(rng, _B64URL, 46)
    if chain == "xmr":
        return "4" + _pick(rng, _B58, 94)
    return _pick(rng, _B58, 44)  # sol


def txid(rng: random.Random, psys_cid: str) -> str:
    chain = COINS[psys_cid].chain
    if chain == "eth":
        return f"0x{rng.getrandbits(256):064x}"
    if chain == "sol":
        return _pick(rng, _B58, 88)
    return f"{rng.getrandbits(256):064x}"


def token(rng: random.Random, n: int = 32) -> str:
    return f"{rng.getrandbits(n * 4):0{n}x}"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def qr_code(payload: str, size: int = 21) -> str:
    """A small valid PNG whose pixels come from ``payload`` (looks like a QR code, decodes as nothing)."""
    bits = int.from_bytes(hashlib.sha512(payload.encode()).digest() * 2, "big")
    rows = b""
    for y in range(size):
        row = bytes(0 if (bits >> ((y * size + x) % 1024)) & 1 else 255 for x in range(size))
        rows += b"\x00" + row
    png = b"\x89PNG\r\n\x1a\n"
    png += _png_chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
    png += _png_chunk(b"IDAT", zlib.compress(rows, 9))
    png += _png_chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
