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
from email import policy as email_policy
from email.parser import BytesParser
from html.entities import name2codepoint
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from tools.errors import CallbackFormatError, CallbackSignatureError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
_HASH_FIELD = "verify_hash"
_HASH_RE = re.compile(r"[0-9a-f]{40}")
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


PhpValue = str | dict[str | int, "PhpValue"]
"""A ``$_POST`` value: a string, or the array PHP builds from ``name[key]=...`` fields."""


def php_serialize(fields: Mapping[str, PhpValue]) -> bytes:
    """PHP ``serialize(ksort($fields))``, lengths in UTF-8 bytes. ``ksort`` orders the top level only; a
    nested array (``params[order_number]=...``) keeps the order PHP built it in."""
    for key, value in fields.items():
        if not isinstance(key, str) or not isinstance(value, str | dict):
            raise TypeError(f"php_serialize takes str keys and str or array values; field {key!r} is not")
        if _PHP_NUMERIC_RE.fullmatch(key):
            raise ValueError(f"numeric key {key!r}: PHP would make it an int key or sort it as a number")
    ordered = {k: fields[k] for k in sorted(fields, key=lambda k: k.encode("utf-8"))}  # ksort(): byte order
    return _php_value(ordered)


def _php_value(value: PhpValue | Mapping[Any, Any]) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b's:%d:"%s";' % (len(raw), raw)
    parts = [b"a:%d:{" % len(value)]
    for key, item in value.items():
        parts.append(b"i:%d;" % key if isinstance(key, int) else _php_value(key))
        parts.append(_php_value(item))
    parts.append(b"}")
    return b"".join(parts)


_PHP_INT_KEY_RE = re.compile(r"0|-?[1-9][0-9]{0,18}")  # "-0" and "01" stay strings, as in PHP


def _php_name(name: str) -> tuple[str, list[str]] | None:
    """PHP's split of a ``$_POST`` name (main/php_variables.c): the base name, its ``[...]`` subscripts
    (an empty one appends). ``.`` and space in the base become ``_``, as does a ``[`` never closed;
    after the last ``]``, anything but another ``[`` ends the name. None: PHP would drop the field."""
    name = name.split("\x00", 1)[0].lstrip(" ")  # C strings: a NUL ends the name
    cut = name.find("[")
    base, rest = (name, "") if cut < 0 else (name[:cut], name[cut:])
    if rest and "]" not in rest:  # a "[" never closed is "_", and the name goes on (PHP 8)
        base, rest = base + "_" + rest[1:].replace("[", "_"), ""
    base = base.replace(".", "_").replace(" ", "_")
    if not base:
        return None
    subscripts: list[str] = []
    while rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            break
        sub = rest[1:close]
        subscripts.append(
            "" if sub == "" or (len(sub) == 1 and sub in " \t\n\r\v\f") else sub
        )  # one blank, "]"
        rest = rest[close + 1 :]
    return base, subscripts


def php_post(pairs: Sequence[tuple[str, str]]) -> dict[str, PhpValue]:
    """``$_POST`` as PHP fills it from these fields; a plain field given twice is refused (PHP would keep
    the last: a signature over one of two values is no signature)."""
    post: dict[str, PhpValue] = {}
    for key, value in pairs:
        split = _php_name(key)
        if split is None:
            raise CallbackFormatError(f"form field name {key[:40]!r} is empty once PHP parses it")
        base, subscripts = split
        if _PHP_NUMERIC_RE.fullmatch(base):
            raise CallbackFormatError(f"form field name {key[:40]!r} is numeric (PHP re-keys it)")
        if not subscripts:
            if base in post:
                raise CallbackFormatError(f"form field {base!r} appears more than once")
            post[base] = value
            continue
        node = post.setdefault(base, {})
        if not isinstance(node, dict):
            raise CallbackFormatError(f"form field {base!r} is both a value and an array")
        for depth, sub in enumerate(subscripts):
            last = depth == len(subscripts) - 1
            index: str | int
            if sub == "":
                index = max((k for k in node if isinstance(k, int)), default=-1) + 1
            else:
                index = int(sub) if _PHP_INT_KEY_RE.fullmatch(sub) and -(2**63) <= int(sub) < 2**63 else sub
            if last:
                if index in node:
                    raise CallbackFormatError(f"form field {key[:40]!r} appears more than once")
                node[index] = value
            else:
                child = node.setdefault(index, {})
                if not isinstance(child, dict):
                    raise CallbackFormatError(f"form field {key[:40]!r} is both a value and an array")
                node = child
    return post


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


def _form_message(fields: Mapping[str, PhpValue]) -> bytes:
    """What the PHP receivers hash: drop verify_hash, (string)expire_utc, decode tx_urls, serialize."""
    post = {k: v for k, v in fields.items() if k != _HASH_FIELD}
    if isinstance(post.get("expire_utc"), str | int):
        post["expire_utc"] = str(post["expire_utc"])
    tx_urls = post.get("tx_urls")
    if isinstance(tx_urls, str):
        post["tx_urls"] = _php_html_entity_decode(tx_urls)
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
    return _verify_post(pairs, secrets)


def verify_multipart(body: bytes, content_type: str, secrets: Sequence[str]) -> VerifiedCallback:
    """Verify a ``multipart/form-data`` callback: what PHP's curl sends for an array of fields. PHP fills
    ``$_POST`` from it exactly as from a form body, so it is signed the same way (variant A)."""
    _check_secrets(secrets)
    if "boundary=" not in content_type.lower():
        raise CallbackFormatError("multipart callback has no boundary in its Content-Type")
    message = BytesParser(policy=email_policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise CallbackFormatError("multipart callback body has no parts")
    pairs: list[tuple[str, str]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            raise CallbackFormatError("a multipart part is not a named form field (a file, or no name)")
        raw = part.get_payload(decode=True)
        pairs.append((name, _decode_utf8(raw if isinstance(raw, bytes) else b"")))
        if len(pairs) > 1000:
            raise CallbackFormatError("multipart callback has more than 1000 fields")
    return _verify_post(pairs, secrets)


def _verify_post(pairs: Sequence[tuple[str, str]], secrets: Sequence[str]) -> VerifiedCallback:
    if not pairs:
        raise CallbackFormatError("form body has no fields")
    post = php_post(pairs)
    given = post.pop(_HASH_FIELD, None)
    received = _take_hash({} if given is None else {_HASH_FIELD: given})
    index = _match(received, secrets, [_form_message(post)])
    if index is None:
        raise CallbackSignatureError(f"verify_hash does not match (form encoding, {len(secrets)} key(s))")
    fields = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in post.items()}
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


MULTIPART_CONTENT_TYPE = "multipart/form-data"


def verify(
    body: bytes, *, content_type: str, secrets: Sequence[str], json_query: bool = False
) -> VerifiedCallback:
    """Verify a callback however Plisio sent it. Plisio does not document its Content-Type, so the variant
    is decided by what is known: ``?json=true`` on the callback URL (the documented switch) means JSON;
    else a ``multipart/form-data`` body is read as its parts; else a body that opens with ``{`` is JSON and
    any other is a form, whatever the header says (``text/plain``, a form type on JSON text)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if json_query:
        return verify_json(body, secrets)
    if media_type == MULTIPART_CONTENT_TYPE:
        return verify_multipart(body, content_type, secrets)
    if body.lstrip(b" \t\r\n")[:1] == b"{":
        return verify_json(body, secrets)
    return verify_form(body, secrets)
