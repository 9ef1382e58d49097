"""Sign and verify Plisio callbacks (IPN), in both encodings Plisio uses.

Why our own code: the official Python SDK only knows the JSON variant and gets it wrong for
non-ASCII text, and a receiver must reproduce the sender's bytes exactly or every callback fails.

* Form callbacks (the default) are signed like the PHP receivers do (plisio-api.md §4.3):
  HMAC-SHA1 over PHP ``serialize()`` of the ``ksort``-ed fields, after ``(string)expire_utc`` and
  ``html_entity_decode(tx_urls)`` (emulated exactly: HTML 4.01 entities, PHP's default flags).
* JSON callbacks (``?json=true``, §4.4) are signed over compact JSON text. We try the received key
  order first (B1: Plisio's docs), then sorted keys with every value stringified (the Node SDK).
  Numbers keep the text they arrived with, so re-serialising never turns ``1.10`` into ``1.1``.

Secrets and expected hashes never appear in an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html.entities import name2codepoint
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from tools.errors import CallbackFormatError, CallbackSignatureError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
_HASH_FIELD = "verify_hash"
_HASH_RE = re.compile(r"[0-9a-f]{40}")
# Keys PHP's $_POST would keep as-is: no '.', ' ' or '[' (mangled), no integer keys (re-keyed).
_FORM_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# PHP numeric strings: such array keys become ints or are compared numerically by ksort().
_PHP_NUMERIC_RE = re.compile(r"[ \t\n\r\v\f]*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[ \t\n\r\v\f]*")
_ENTITY_RE = re.compile(r"&(?:#[xX]([0-9a-fA-F]+)|#([0-9]+)|([A-Za-z][A-Za-z0-9]*));")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class VerifiedCallback:
    """A callback whose ``verify_hash`` matched; ``key_index`` says which secret (0 = current).

    ``fields`` excludes ``verify_hash``. JSON numbers, ``null``, ``true``, ``false`` keep their JSON text.
    """

    fields: dict[str, str]
    encoding: Literal["form", "json"]
    key_index: int


class _RawNumber(str):
    """A JSON number kept as the exact text it arrived as."""


def php_serialize(fields: Mapping[str, str]) -> bytes:
    """PHP ``serialize(ksort($fields))`` for a string->string array, lengths in UTF-8 bytes."""
    for key, value in fields.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"php_serialize takes str keys and values; field {key!r} is not")
        if _PHP_NUMERIC_RE.fullmatch(key):
            raise ValueError(f"numeric key {key!r}: PHP would make it an int key or sort it as a number")
    parts = [b"a:%d:{" % len(fields)]
    for key in sorted(fields, key=lambda k: k.encode("utf-8")):  # ksort(): byte order for these keys
        for text in (key, fields[key]):
            raw = text.encode("utf-8")
            parts.append(b's:%d:"%s";' % (len(raw), raw))
    parts.append(b"}")
    return b"".join(parts)


def _php_html_entity_decode(text: str) -> str:
    """PHP 8.1+ ``html_entity_decode($s)``: ENT_QUOTES | ENT_SUBSTITUTE | ENT_HTML401, UTF-8."""

    def replace(match: re.Match[str]) -> str:
        hex_digits, dec_digits, name = match.groups()
        if name is not None:
            cp = name2codepoint.get(name)  # exactly the HTML 4.01 table; no &apos;
            return match.group(0) if cp is None else chr(cp)
        cp = int(hex_digits, 16) if hex_digits is not None else int(dec_digits)
        # unicode_cp_is_allowed() for ENT_HTML401 (ext/standard/html.c); noncharacters pass.
        allowed = 0x20 <= cp <= 0x7E or cp in (9, 10, 13) or 0xA0 <= cp <= 0xD7FF or 0xE000 <= cp <= 0x10FFFF
        return chr(cp) if allowed else match.group(0)

    return _ENTITY_RE.sub(replace, text)


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha1).hexdigest()


def sign_form(fields: Mapping[str, str], secret: str) -> str:
    """Variant A: the ``verify_hash`` a PHP receiver expects for these form fields."""
    return _hmac_hex(secret, _form_message(fields))


def _form_message(fields: Mapping[str, str]) -> bytes:
    """What the PHP receivers hash: drop verify_hash, (string)expire_utc, decode tx_urls, serialize."""
    post = {k: v for k, v in fields.items() if k != _HASH_FIELD}
    if "expire_utc" in post:
        post["expire_utc"] = str(post["expire_utc"])
    if "tx_urls" in post:
        post["tx_urls"] = _php_html_entity_decode(post["tx_urls"])
    return php_serialize(post)


def _json_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _RawNumber):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    raise TypeError(f"JSON callback values are null, str, int, bool or Decimal; not {type(value).__name__}")


def _json_text(items: Iterable[tuple[str, object]]) -> str:
    """Compact JSON object, like ``JSON.stringify`` (no ``\\/``, no ``\\uXXXX`` for non-ASCII)."""
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_json_value(v)}" for k, v in items) + "}"


def sign_json(payload: Mapping[str, Any], secret: str) -> str:
    """Variant B1: HMAC-SHA1 over compact JSON of ``payload`` minus ``verify_hash``, in its order."""
    text = _json_text((k, v) for k, v in payload.items() if k != _HASH_FIELD)
    return _hmac_hex(secret, text.encode("utf-8"))


def encode_form_callback(fields: Mapping[str, str], secret: str) -> bytes:
    """The form body a sandbox POSTs: the fields as given, then ``verify_hash``."""
    pairs = [(k, str(v)) for k, v in fields.items() if k != _HASH_FIELD]
    return urlencode([*pairs, (_HASH_FIELD, sign_form(fields, secret))]).encode("ascii")


def encode_json_callback(payload: Mapping[str, Any], secret: str) -> bytes:
    """The JSON body: signed text with ``"verify_hash"`` appended as the last member."""
    text = _json_text((k, v) for k, v in payload.items() if k != _HASH_FIELD)
    signature = _hmac_hex(secret, text.encode("utf-8"))
    separator = "," if len(text) > 2 else ""
    return f'{text[:-1]}{separator}"{_HASH_FIELD}":"{signature}"}}'.encode()


def _check_secrets(secrets: Sequence[str]) -> None:
    if isinstance(secrets, str) or not secrets:
        raise ValueError("secrets must be a non-empty sequence of secrets (current first)")
    if not all(isinstance(secret, str) and secret for secret in secrets):
        raise ValueError("an accepted callback secret is empty or not a str")


def _decode_utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CallbackFormatError(f"callback body is not valid UTF-8 (byte offset {exc.start})") from None


def _take_hash(fields: dict[str, Any]) -> str:
    if _HASH_FIELD not in fields:
        raise CallbackSignatureError("callback has no verify_hash field")
    received = fields.pop(_HASH_FIELD)
    if not isinstance(received, str) or isinstance(received, _RawNumber):
        raise CallbackSignatureError("verify_hash is not a string")
    if not received:
        raise CallbackSignatureError("verify_hash is empty")
    if not _HASH_RE.fullmatch(received):
        raise CallbackSignatureError(f"verify_hash is not 40 lowercase hex digits ({len(received)} chars)")
    return received


def _match(received: str, secrets: Sequence[str], messages: Sequence[bytes]) -> int | None:
    for index, secret in enumerate(secrets):
        # Every candidate is compared (no short-circuit), each in constant time.
        if any([hmac.compare_digest(_hmac_hex(secret, m), received) for m in messages]):
            return index
    return None


def verify_form(body: bytes, secrets: Sequence[str]) -> VerifiedCallback:
    """Verify a form-encoded callback (variant A). Raises CallbackFormatError/CallbackSignatureError."""
    _check_secrets(secrets)
    text = _decode_utf8(body)
    try:
        # Not strict: like PHP's $_POST, a bare "name" is name="" and empty "&&" segments are skipped.
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=1000)
    except UnicodeDecodeError:
        raise CallbackFormatError("a percent-encoded form name or value is not valid UTF-8") from None
    except ValueError as exc:
        raise CallbackFormatError(f"form body cannot be parsed: {exc}") from None
    if not pairs:
        raise CallbackFormatError("form body has no fields")
    fields: dict[str, str] = {}
    for key, value in pairs:
        if not _FORM_KEY_RE.fullmatch(key):
            raise CallbackFormatError(f"form field name {key[:40]!r} is not a plain identifier")
        if key in fields:
            raise CallbackFormatError(f"form field {key!r} appears more than once")
        fields[key] = value
    received = _take_hash(fields)
    index = _match(received, secrets, [_form_message(fields)])
    if index is None:
        raise CallbackSignatureError(f"verify_hash does not match (form encoding, {len(secrets)} key(s))")
    return VerifiedCallback(fields=fields, encoding="form", key_index=index)


def _js_number(raw: str) -> str:
    """``String(JSON.parse(raw))`` in JavaScript, for a JSON number literal."""
    value = float(raw)
    if not math.isfinite(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    _, digit_tuple, exp = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exp, int)
    digits, sign = "".join(map(str, digit_tuple)), "-" if value < 0 else ""
    k, n = len(digits), exp + len(digits)  # JS Number::toString, ECMA-262 §6.1.6.1.20
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{digits}"
    mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def _as_text(value: object, *, js: bool) -> str:
    if isinstance(value, _RawNumber):
        return _js_number(value) if js else str(value)
    if isinstance(value, str):
        return value
    return _json_value(value)  # null / true / false


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise CallbackFormatError(f"JSON callback has key {key[:40]!r} more than once")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise CallbackFormatError(f"JSON callback contains {name}, which is not JSON")


def verify_json(body: bytes, secrets: Sequence[str]) -> VerifiedCallback:
    """Verify a JSON callback (variant B1 in received order, then the Node SDK's sorted form)."""
    _check_secrets(secrets)
    text = _decode_utf8(body)
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_object_hook,
            parse_float=_RawNumber,
            parse_int=_RawNumber,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        raise CallbackFormatError(f"callback body is not JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(obj, dict):
        raise CallbackFormatError(f"JSON callback must be an object, got {type(obj).__name__}")
    for key, value in obj.items():
        if not (value is None or isinstance(value, str | bool)):  # numbers arrive as _RawNumber (a str)
            kind = "object" if isinstance(value, dict) else "array"
            raise CallbackFormatError(f"JSON callback field {key[:40]!r} is a nested {kind}")
        if _SURROGATE_RE.search(key) or (isinstance(value, str) and _SURROGATE_RE.search(value)):
            raise CallbackFormatError(f"JSON callback field {key[:40]!r} has a lone surrogate escape")
    received = _take_hash(obj)
    in_order = _json_text(obj.items())
    node_keys = sorted(obj, key=lambda k: k.encode("utf-16-be"))  # JS sorts by UTF-16 code unit
    node_style = _json_text((k, _as_text(obj[k], js=True)) for k in node_keys)
    index = _match(received, secrets, [in_order.encode("utf-8"), node_style.encode("utf-8")])
    if index is None:
        raise CallbackSignatureError(f"verify_hash does not match (json encoding, {len(secrets)} key(s))")
    fields = {k: _as_text(v, js=False) for k, v in obj.items()}
    return VerifiedCallback(fields=fields, encoding="json", key_index=index)


def verify(body: bytes, *, content_type: str, secrets: Sequence[str]) -> VerifiedCallback:
    """Dispatch on the request's Content-Type (parameters such as ``charset`` are ignored)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == FORM_CONTENT_TYPE:
        return verify_form(body, secrets)
    if media_type == JSON_CONTENT_TYPE:
        return verify_json(body, secrets)
    raise CallbackFormatError(
        f"unsupported callback content type {content_type[:100]!r}; "
        f"expected {FORM_CONTENT_TYPE} or {JSON_CONTENT_TYPE}"
    )
