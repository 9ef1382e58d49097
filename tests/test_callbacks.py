"""Plisio callback signing and verification (tools.plisio.callbacks), both encodings.

Expected hashes are computed independently here (hand-written PHP serialize strings and JSON
text, then ``hmac.new``), and cross-checked against real PHP and Node.js when they are installed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
from decimal import Decimal
from html.entities import name2codepoint
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest

from tools.errors import CallbackFormatError, CallbackSignatureError
from tools.plisio.callbacks import (
    VerifiedCallback,
    encode_form_callback,
    encode_json_callback,
    php_post,
    php_serialize,
    sign_form,
    sign_json,
    verify,
    verify_json,
)

SECRET = "current-secret-Ünïcode-🔑"
OLD_SECRET = "previous-secret"
FORM = "application/x-www-form-urlencoded"
JSON_CT = "application/json"


def hmac_sha1(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha1).hexdigest()


FIELDS: dict[str, str] = {
    "txn_id": "6553a1f2c0ffee0123456789",
    "status": "completed",
    "amount": "0.00051255",
    "order_name": "Café Müller",
    "order_number": "order/42",
    "merchant": "日本",
    "comment": "Invoice details: https://x/y?a=1&b=2",
    "tx_urls": "[&quot;https://a/b&quot;]",
    "expire_utc": "1700000000",
    "description": "",
}


def encode(kind: str, data: dict[str, Any], secret: str = SECRET) -> bytes:
    return encode_form_callback(data, secret) if kind == "form" else encode_json_callback(data, secret)


def content_type(kind: str) -> str:
    return FORM if kind == "form" else JSON_CT


# ---------------------------------------------------------------- php_serialize and variant A


def test_php_serialize_matches_hand_written_bytes() -> None:
    fields = {"b": "Café Müller", "a": "https://x/y", "c": "日本", "B": ""}
    expected = (
        'a:4:{s:1:"B";s:0:"";s:1:"a";s:11:"https://x/y";s:1:"b";s:13:"Café Müller";s:1:"c";s:6:"日本";}'
    )
    assert php_serialize(fields) == expected.encode("utf-8")
    assert php_serialize({}) == b"a:0:{}"


@pytest.mark.parametrize("key", ["12", "-3", "1.5", " 7", "1e3"])
def test_php_serialize_rejects_numeric_keys(key: str) -> None:
    with pytest.raises(ValueError, match="numeric key"):
        php_serialize({key: "x"})


def test_php_serialize_rejects_non_str_values() -> None:
    with pytest.raises(TypeError, match="str keys and str or array values"):
        php_serialize({"a": 1})  # type: ignore[dict-item]


def test_sign_form_hand_computed_vector() -> None:
    # ksort, tx_urls html-entity-decoded, verify_hash ignored, UTF-8 byte lengths.
    fields = {
        "verify_hash": "0" * 40,
        "tx_urls": "[&quot;https://a/b&quot;]",
        "order_name": "Café Müller",
        "expire_utc": "1700000000",
        "amount": "1.10",
    }
    serialized = (
        'a:4:{s:6:"amount";s:4:"1.10";s:10:"expire_utc";s:10:"1700000000";'
        's:10:"order_name";s:13:"Café Müller";s:7:"tx_urls";s:15:"["https://a/b"]";}'
    )
    assert sign_form(fields, "k") == hmac_sha1("k", serialized.encode("utf-8"))


def test_sign_form_casts_expire_utc_like_php() -> None:
    as_int: dict[str, Any] = {"expire_utc": 1700000000, "status": "new"}
    assert sign_form(as_int, "k") == sign_form({"expire_utc": "1700000000", "status": "new"}, "k")


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("[&quot;https://a/b&quot;]", '["https://a/b"]'),
        ("&amp;lt; &#39; &#x41;&#X42;&#00065; &euro;", "&lt; ' ABA €"),
        # PHP (ENT_HTML401) leaves these alone, where html.unescape would decode them:
        (
            "&apos; &amp x &#128; &#0; &#xD800; &#1114112; &#65",
            "&apos; &amp x &#128; &#0; &#xD800; &#1114112; &#65",
        ),
    ],
)
def test_tx_urls_entities_decoded_like_php(raw: str, decoded: str) -> None:
    assert sign_form({"tx_urls": raw}, "k") == hmac_sha1("k", php_serialize({"tx_urls": decoded}))


def test_form_body_is_urlencoded_with_verify_hash_last() -> None:
    body = encode_form_callback(FIELDS, SECRET)
    pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert pairs[:-1] == list(FIELDS.items())
    assert pairs[-1] == ("verify_hash", sign_form(FIELDS, SECRET))


# ---------------------------------------------------------------- variant B (JSON)

# Plisio/nodejs-api-client test/ResponseValidator.test.ts: the one public, official vector.
NODE_VECTOR = {
    "amount": "15.300000",
    "comment": "Invoice details: https://plisio.loc/account/transactions/61b19fd3f609ba61f4282547",
    "confirmations": "0",
    "currency": "USDT",
    "ipn_type": "invoice",
    "merchant": "Test shop",
    "merchant_id": "5d09fcd84f1e66138d706ed8",
    "order_name": "test USDT",
    "order_number": "21120906",
    "psys_cid": "USDT",
    "source_amount": "15.00",
    "source_currency": "USD",
    "source_rate": "1.000000",
    "status": "completed",
    "txn_id": "61b19fd3f609ba61f4282547",
    "verify_hash": "6c53ff3472d694bfa13851ef266ec67389d25e2f",
}
NODE_SECRET = "8LEfCIhEwSApKj02NM0jI-1urGthaqprSArbfzTAcvAIpMQu_jGTkXEyE3TE26Ip"


def test_official_node_vector() -> None:
    assert sign_json(NODE_VECTOR, NODE_SECRET) == NODE_VECTOR["verify_hash"]
    result = verify(json.dumps(NODE_VECTOR).encode(), content_type=JSON_CT, secrets=[NODE_SECRET])
    assert result.encoding == "json"
    assert "verify_hash" not in result.fields
    assert sign_form(NODE_VECTOR, NODE_SECRET) != NODE_VECTOR["verify_hash"]  # §4.4: not PHP serialize


def test_sign_json_hand_computed_vector() -> None:
    payload = {"z": "Café Müller", "url": "https://x/y", "n": "日本", "expire_utc": 1700000000, "ok": True}
    payload |= {"none": None, "amount": Decimal("1.10"), "verify_hash": "ignored"}
    text = (
        '{"z":"Café Müller","url":"https://x/y","n":"日本","expire_utc":1700000000,'
        '"ok":true,"none":null,"amount":1.10}'
    )
    assert sign_json(payload, "k") == hmac_sha1("k", text.encode("utf-8"))


def test_sign_json_rejects_floats_and_nested_values() -> None:
    for bad in (1.1, {"a": "b"}, ["x"], Decimal("NaN")):
        with pytest.raises(TypeError):
            sign_json({"a": bad}, "k")


def test_json_body_signed_over_exact_bytes_with_verify_hash_last() -> None:
    payload = {"amount": Decimal("1.10"), "merchant": "日本", "tx_urls": '["https://a/b"]'}
    body = encode_json_callback(payload, SECRET)
    text = body.decode("utf-8")
    head, _, tail = text.rpartition(',"verify_hash":"')
    assert list(json.loads(text))[-1] == "verify_hash"
    assert '"amount":1.10,' in text
    assert "日本" in text
    assert "\\/" not in text
    assert tail == sign_json(payload, SECRET) + '"}'
    assert hmac_sha1(SECRET, (head + "}").encode("utf-8")) == tail[:40]
    assert encode_json_callback({}, "k") == f'{{"verify_hash":"{hmac_sha1("k", b"{}")}"}}'.encode()


def test_json_numbers_keep_their_text() -> None:
    signed = '{"amount":1.10,"big":12345678901234567890,"tiny":1E-7,"neg":-0}'
    body = signed[:-1] + ',"verify_hash":"' + hmac_sha1("k", signed.encode()) + '"}'
    result = verify_json(body.encode(), ["k"])
    assert result.fields == {"amount": "1.10", "big": "12345678901234567890", "tiny": "1E-7", "neg": "-0"}


def test_node_style_sorted_stringified_signature_accepted() -> None:
    # NODE ResponseValidator: drop verify_hash, sort keys, value + "", JSON.stringify.
    body_obj = '{"z":"x","c":null,"b":true,"a":1.10,"d":7,"e":1e21,"f":"Müller"}'
    signed = '{"a":"1.1","b":"true","c":"null","d":"7","e":"1e+21","f":"Müller","z":"x"}'
    body = body_obj[:-1] + ',"verify_hash":"' + hmac_sha1(SECRET, signed.encode("utf-8")) + '"}'
    result = verify(body.encode("utf-8"), content_type=JSON_CT, secrets=[OLD_SECRET, SECRET])
    assert result.key_index == 1
    assert result.fields == {
        "z": "x",
        "c": "null",
        "b": "true",
        "a": "1.10",
        "d": "7",
        "e": "1e21",
        "f": "Müller",
    }


# ---------------------------------------------------------------- round trips, rotation, tampering


@pytest.mark.parametrize("kind", ["form", "json"])
def test_round_trip_and_key_rotation(kind: str) -> None:
    body = encode(kind, FIELDS)
    current = verify(body, content_type=content_type(kind) + "; charset=UTF-8", secrets=[SECRET, OLD_SECRET])
    assert current == VerifiedCallback(fields=FIELDS, encoding=kind, key_index=0)  # type: ignore[arg-type]
    previous = verify(body, content_type=content_type(kind), secrets=["newer", SECRET])
    assert previous.key_index == 1
    with pytest.raises(CallbackSignatureError, match=f"does not match \\({kind} encoding"):
        verify(body, content_type=content_type(kind), secrets=[OLD_SECRET])


def raw_body(kind: str, data: dict[str, str]) -> bytes:
    """A body carrying ``data`` exactly as given (no signing)."""
    return urlencode(data).encode() if kind == "form" else json.dumps(data, ensure_ascii=False).encode()


@pytest.mark.parametrize("kind", ["form", "json"])
@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("change", ["append", "drop"])
def test_tampered_field_rejected(kind: str, field: str, change: str) -> None:
    signature = sign_form(FIELDS, SECRET) if kind == "form" else sign_json(FIELDS, SECRET)
    tampered = {k: v for k, v in FIELDS.items() if change == "append" or k != field}
    if change == "append":
        tampered[field] += "0"
    assert verify(
        raw_body(kind, {**FIELDS, "verify_hash": signature}),
        content_type=content_type(kind),
        secrets=[SECRET],
    )
    with pytest.raises(CallbackSignatureError, match="does not match"):
        verify(
            raw_body(kind, {**tampered, "verify_hash": signature}),
            content_type=content_type(kind),
            secrets=[SECRET],
        )


@pytest.mark.parametrize("kind", ["form", "json"])
def test_added_field_rejected(kind: str) -> None:
    signature = sign_form(FIELDS, SECRET) if kind == "form" else sign_json(FIELDS, SECRET)
    with pytest.raises(CallbackSignatureError, match="does not match"):
        verify(
            raw_body(kind, {**FIELDS, "extra": "", "verify_hash": signature}),
            content_type=content_type(kind),
            secrets=[SECRET],
        )


@pytest.mark.parametrize("kind", ["form", "json"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "no verify_hash field"),
        ("", "verify_hash is empty"),
        ("abc123", "not 40 lowercase hex"),
        ("a" * 41, "not 40 lowercase hex"),
        ("g" * 40, "not 40 lowercase hex"),
        ("A" * 40, "not 40 lowercase hex"),
    ],
)
def test_bad_verify_hash_rejected(kind: str, value: str | None, message: str) -> None:
    data = dict(FIELDS) if value is None else {**FIELDS, "verify_hash": value}
    with pytest.raises(CallbackSignatureError, match=message):
        verify(raw_body(kind, data), content_type=content_type(kind), secrets=[SECRET])


@pytest.mark.parametrize("kind", ["form", "json"])
def test_messages_never_carry_secret_or_expected_hash(kind: str) -> None:
    expected = sign_form(FIELDS, SECRET) if kind == "form" else sign_json(FIELDS, SECRET)
    body = encode(kind, FIELDS, secret="attacker")
    with pytest.raises(CallbackSignatureError) as info:
        verify(body, content_type=content_type(kind), secrets=[SECRET, OLD_SECRET])
    for secret_text in (SECRET, OLD_SECRET, expected):
        assert secret_text not in repr(info.value.args)


def test_json_verify_hash_must_be_a_string() -> None:
    with pytest.raises(CallbackSignatureError, match="not a string"):
        verify_json(b'{"a":"b","verify_hash":123}', [SECRET])


# ---------------------------------------------------------------- format errors


@pytest.mark.parametrize("kind", ["form", "json"])
def test_bad_utf8_rejected(kind: str) -> None:
    with pytest.raises(CallbackFormatError, match="not valid UTF-8"):
        verify(b"status=\xff\xfe", content_type=content_type(kind), secrets=[SECRET])


@pytest.mark.parametrize("ctype", ["text/plain", "", "application/jsonx", FORM])
@pytest.mark.parametrize("kind", ["form", "json"])
def test_the_body_decides_the_variant_whatever_the_label(ctype: str, kind: str) -> None:
    result = verify(encode(kind, FIELDS), content_type=ctype, secrets=[SECRET])
    assert result.encoding == kind and result.fields == FIELDS


def test_json_true_decides_before_the_body() -> None:
    with pytest.raises(CallbackFormatError, match="not JSON"):
        verify(encode("form", FIELDS), content_type=JSON_CT, secrets=[SECRET], json_query=True)


def test_a_multipart_label_on_another_body_is_a_format_error() -> None:
    with pytest.raises(CallbackFormatError, match="multipart callback body has no parts"):
        verify(encode("json", FIELDS), content_type="multipart/form-data; boundary=x", secrets=[SECRET])
    with pytest.raises(CallbackFormatError, match="no boundary"):
        verify(encode("form", FIELDS), content_type="multipart/form-data", secrets=[SECRET])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "must be an object, got list"),
        (b'"text"', "must be an object, got str"),
        (b"null", "must be an object, got NoneType"),
        (b"", "not JSON"),
        (b"{'a': 1}", "not JSON"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": {"b": "c"}}', "nested object"),
        (b'{"a": ["b"]}', "nested array"),
        (b'{"a": "1", "a": "2"}', "more than once"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
    ],
)
def test_json_format_errors(body: bytes, message: str) -> None:
    with pytest.raises(CallbackFormatError, match=message):
        verify(body, content_type=JSON_CT, secrets=[SECRET], json_query=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no fields"),
        (b"&&", "no fields"),
        (b"status=new&status=completed", "more than once"),
        (b"a=1&a[b]=2", "both a value and an array"),
        (b"a[b]=1&a=2", "more than once"),
        (b"a.b=1&a_b=2", "more than once"),  # PHP reads both as a_b
        (b"a[b]=1&a[b]=2", "more than once"),
        (b"=1", "empty once PHP parses it"),
        (b"7=1", "numeric"),
        (b"status=%ff", "percent-encoded"),
        (b"a=1&" * 1001, "cannot be parsed"),
    ],
)
def test_form_format_errors(body: bytes, message: str) -> None:
    with pytest.raises(CallbackFormatError, match=message):
        verify(body, content_type=FORM, secrets=[SECRET])


@pytest.mark.parametrize("secrets", [[], (), "a-single-string", [""], [SECRET, ""]])
@pytest.mark.parametrize("kind", ["form", "json"])
def test_missing_secrets_is_a_bug(kind: str, secrets: Any) -> None:
    with pytest.raises(ValueError, match="secret"):
        verify(encode(kind, FIELDS), content_type=content_type(kind), secrets=secrets)


# ---------------------------------------------------------------- real PHP and Node.js

PHP_RECEIVER = r"""
parse_str(stream_get_contents(STDIN), $post);           // what fills $_POST
$verifyHash = $post['verify_hash'];
unset($post['verify_hash']);
ksort($post);
if (isset($post['expire_utc'])) { $post['expire_utc'] = (string)$post['expire_utc']; }
if (isset($post['tx_urls'])) { $post['tx_urls'] = html_entity_decode($post['tx_urls']); }
$s = serialize($post);
$h = hash_hmac('sha1', $s, getenv('PLISIO_SECRET'));
echo json_encode(['serialized' => base64_encode($s), 'hash' => $h, 'valid' => $h === $verifyHash]);
"""


PHP_SENDER = r"""
$post = json_decode(stream_get_contents(STDIN), true);
$signed = $post;
ksort($signed);
$signed['tx_urls'] = html_entity_decode($signed['tx_urls']);
$post['verify_hash'] = hash_hmac('sha1', serialize($signed), getenv('PLISIO_SECRET'));
echo json_encode(['body' => http_build_query($post)]);
"""


def run_php(code: str, stdin: bytes, secret: str = SECRET) -> Any:
    php = shutil.which("php")
    if php is None:
        pytest.skip(
            "php-cli not installed: cannot cross-check serialize()/hash_hmac (apt-get install php-cli)"
        )
    env = {**os.environ, "PLISIO_SECRET": secret}
    done = subprocess.run(
        [php, "-r", code], input=stdin, capture_output=True, check=True, env=env, timeout=30
    )
    return json.loads(done.stdout)


def test_cross_check_against_real_php() -> None:
    fields = {
        **FIELDS,
        "Zeta": "upper case sorts first",
        "a_b": "x+y=z & more; 100%",
        "ab": "ключ",
        "tx_urls": "[&quot;https://a/b?x=1&amp;y=2&quot;] &apos; &amp x &#128; &#39; &hellip;",
    }
    body = encode_form_callback(fields, SECRET)
    php = run_php(PHP_RECEIVER, body)
    assert php["valid"] is True  # a PHP receiver accepts what we send
    decoded = dict(fields, tx_urls='["https://a/b?x=1&y=2"] &apos; &amp x &#128; \' …')
    assert base64.b64decode(php["serialized"]) == php_serialize(decoded)
    assert php["hash"] == sign_form(fields, SECRET)
    # And the other way round: a body signed and encoded by PHP passes our receiver.
    php_body = run_php(PHP_SENDER, json.dumps(fields).encode())["body"]
    result = verify(php_body.encode("ascii"), content_type=FORM, secrets=[OLD_SECRET, SECRET])
    assert (result.fields, result.key_index) == (fields, 1)


def test_entity_table_matches_real_php() -> None:
    names = sorted(name2codepoint)
    text = (
        "".join(f"&{name};" for name in names)
        + "&apos;&#39;&#34;&#x27;&#xFFFE;&#xFDD0;&#x1F600;&#9;&#127;&#x10FFFF;&#xE000;"
        + "&#13;&#10;&#xA0;&#x9F;&#31;&#x110000;&#x;&#;&lt&LT;&Amp;"
    )
    php = run_php("echo json_encode(html_entity_decode(stream_get_contents(STDIN)));", text.encode())
    assert sign_form({"tx_urls": text}, "k") == hmac_sha1("k", php_serialize({"tx_urls": php}))


def run_node(code: str, stdin: bytes) -> Any:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node not installed: cannot cross-check JSON.stringify signing")
    done = subprocess.run([node, "-e", code], input=stdin, capture_output=True, check=True, timeout=30)
    return json.loads(done.stdout)


NODE_SCRIPT = r"""
const crypto = require("crypto");
const text = require("fs").readFileSync(0, "utf8"), data = JSON.parse(text);
const sign = (s) => crypto.createHmac("sha1", "k").update(s).digest("hex");
// A Node sender per Plisio's docs (B1): sign JSON.stringify(obj), send it with verify_hash added.
const sent = JSON.stringify({...data, verify_hash: sign(JSON.stringify(data))});
// nodejs-api-client ResponseValidator: sorted keys, every value + "", over the received text.
const sorted = Object.keys(data).sort().reduce((o, k) => { o[k] = data[k] + ""; return o; }, {});
const received = text.trimEnd().slice(0, -1) + ',"verify_hash":"' + sign(JSON.stringify(sorted)) + '"}';
console.log(JSON.stringify({sent, received, ours: sign(JSON.stringify({z: data.z}))}));
"""


def test_cross_check_against_real_node() -> None:
    text = r'{"z":"Café/日本 \"q\" \u0001 \/","amount":1.10,"e":1E-7,"big":12345678901234567890,"t":false,"n":null}'
    node = run_node(NODE_SCRIPT, text.encode("utf-8"))
    for body in (node["sent"], node["received"]):
        assert verify_json(body.encode("utf-8"), ["k"]).key_index == 0
    assert sign_json({"z": json.loads(text)["z"]}, "k") == node["ours"]


PHP_POST = r"""
parse_str(stream_get_contents(STDIN), $post);
ksort($post);
echo json_encode(['serialized' => base64_encode(serialize($post))]);
"""


def test_nested_form_names_parse_as_php_fills_post() -> None:
    """PHP's own parse_str on names a receiver may meet: brackets, appends, int keys, mangled names."""
    names = ["params[order_number]", "params[items][]", "params[items][]", "params[0]", "params[-1]",
             "params[01]", "params[a][b][c]", "params[ ]", "params[ x]", "params[  ]", "params[9223372036854775808]",
             "params[]", "a.b", "x[a.b", "  lead", "tail]x", "arr[k]junk[z]", ".u", "m[n[o", "p[-0]", "q\x00r",
             "s[\x0b]", "s[\x0c]", "t[x][y"]  # fmt: skip
    pairs = [(name, f"v{i}") for i, name in enumerate(names)]
    body = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()
    php = run_php(PHP_POST, body)
    assert base64.b64decode(php["serialized"]) == php_serialize(php_post(pairs))


PHP_NESTED_SENDER = r"""
$post = json_decode(stream_get_contents(STDIN), true);
$signed = $post;
ksort($signed);
if (isset($signed['expire_utc'])) { $signed['expire_utc'] = (string)$signed['expire_utc']; }
if (isset($signed['tx_urls'])) { $signed['tx_urls'] = html_entity_decode($signed['tx_urls']); }
$post['verify_hash'] = hash_hmac('sha1', serialize($signed), getenv('PLISIO_SECRET'));
echo json_encode(['body' => http_build_query($post)]);
"""


def test_a_nested_callback_signed_by_php_verifies() -> None:
    fields = {**FIELDS, "params": {"order_number": "123", "items": ["seat", "desk"], "meta": {"k": "ключ"}}}
    php_body = run_php(PHP_NESTED_SENDER, json.dumps(fields).encode())["body"]
    assert "params%5Border_number%5D=123" in php_body, "PHP writes the nested syntax"
    result = verify(php_body.encode("ascii"), content_type=FORM, secrets=[SECRET])
    assert json.loads(result.fields["params"]) == {"order_number": "123", "items": {"0": "seat", "1": "desk"},
                                                   "meta": {"k": "ключ"}}  # fmt: skip
