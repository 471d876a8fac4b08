"""The signer against vectors the official SDK produced (tests/data), the verifier against it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from crawler.signer import (
    SignatureVersion,
    Signer,
    canonical_host,
    canonical_query,
    canonical_request,
    canonical_uri,
    format_date,
)
from crawler.simulator.verify import (
    INVALID_ACCESS_KEY,
    LACK_AUTHORIZATION,
    LACK_CREDENTIAL,
    LACK_DATE,
    LACK_SIGNED_HEADERS,
    SIGNATURE_MISMATCH,
    ParsedAuthorization,
    parse_authorization,
    verify_request,
)

DATA = Path(__file__).parent / "data"
VECTORS: list[dict[str, Any]] = json.loads((DATA / "signer_vectors.json").read_text("utf-8"))
SDK_VECTORS: list[dict[str, Any]] = json.loads(
    (DATA / "sdk_signer_vectors.json").read_text("utf-8")
)
# 24 requests the SDK signed with a temporary credential (x-jdcloud-security-token).
TOKEN_VECTORS: list[dict[str, Any]] = json.loads(
    (DATA / "sdk_security_token_vectors.json").read_text("utf-8")
)
AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
DATE = "20240102T030405Z"
NONCE = "00000000-0000-4000-8000-000000000000"
IMAGE_PATH = "/v1/regions/cn-north-1/images/img-m5s0ed7ldz"
IMAGES_QUERY = "imageSource=public&ids.1=img-b&ids.2=img-a&pageNumber=2&pageSize=100"
SECRETS = {"TESTAK": "TESTSK"}


def _vector(name_prefix: str) -> dict[str, Any]:
    (vector,) = (v for v in VECTORS if v["name"].startswith(name_prefix))
    return vector


def _sign(signer: Signer, *, path: str = IMAGE_PATH, query: str = "") -> dict[str, str]:
    return signer.sign(
        method="GET",
        host="vm.jdcloud-api.com",
        path=path,
        query=query,
        region="cn-north-1",
        at=AT,
        nonce=NONCE,
    )


# --- the SDK's vectors -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"][:2] for v in VECTORS])
def test_vector_intermediates_and_authorization(vector: dict[str, Any]) -> None:
    url = urlsplit(vector["url"])
    headers = vector["headers_present_at_signing_time"]
    body = vector["body"].encode()
    signer = Signer(vector["access_key"], vector["secret_key"], service=vector["service"])

    text, _ = canonical_request(vector["method"], url.netloc, url.path, url.query, headers, body)
    date = vector["x-jdcloud-date"]
    assert text == vector["canonical_request"]
    assert (
        signer.string_to_sign(text, date=date, region=vector["region"])
        == (vector["string_to_sign"])
    )
    authorization = signer.authorization(
        method=vector["method"],
        host=url.netloc,
        path=url.path,
        query=url.query,
        headers=headers,
        body=body,
        region=vector["region"],
        date=date,
    )
    assert authorization == vector["authorization"]


def test_signing_key_matches_the_sdk_key_chain() -> None:
    vector = _vector("T1")
    signer = Signer("TESTAK", "TESTSK")
    key = signer.signing_key("20240102", "cn-north-1")
    assert key.hex() == vector["signing_key_chain_hex"]["kSigning"]


@pytest.mark.parametrize("index", range(len(SDK_VECTORS)))
def test_sdk_vector(index: int) -> None:
    vector = SDK_VECTORS[index]
    signer = Signer(vector["access_key"], vector["secret_key"], service=vector["service"])
    authorization = signer.authorization(
        method=vector["method"],
        host=vector["host"],
        path=vector["path"],
        query=vector["query"],
        headers=vector["headers_at_signing_time"],
        body=vector["body"].encode(),
        region=vector["region"],
        date=vector["x-jdcloud-date"],
    )
    assert authorization == vector["authorization"]


V2_SIGNED_HEADERS = {
    "Content-Type": "application/json",
    "x-jdcloud-date": DATE,
    "x-jdcloud-nonce": NONCE,
}


@pytest.mark.parametrize(
    ("path", "query", "signature"),
    [
        (IMAGE_PATH, "", "6d0c8681100e62f5bee5e644177b48ed218177caf4334019cf20a4d26e1abb88"),
        (
            "/v1/regions/cn-north-1/images",
            IMAGES_QUERY,
            "f4f00c656dcb60686ba6e2a51d90c22af6b6eadd50ac63bf09c77c9883769150",
        ),
    ],
    ids=["V2-a", "V2-b"],
)
def test_jdcloud2_vectors(path: str, query: str, signature: str) -> None:
    expected = (
        "JDCLOUD2-HMAC-SHA256 Credential=TESTAK/20240102/cn-north-1/vm/jdcloud2_request, "
        "SignedHeaders=content-type;host;x-jdcloud-date;x-jdcloud-nonce, "
        f"Signature={signature}"
    )
    signer = Signer("TESTAK", "TESTSK", version="JDCLOUD2")
    authorization = signer.authorization(
        method="GET",
        host="vm.jdcloud-api.com",
        path=path,
        query=query,
        headers=V2_SIGNED_HEADERS,
        body=b"",
        region="cn-north-1",
        date=DATE,
    )
    assert authorization == expected
    assert _sign(signer, path=path, query=query)["Authorization"] == expected


@pytest.mark.parametrize("index", range(len(TOKEN_VECTORS)))
def test_security_token_vector_through_sign(index: int) -> None:
    """`sign` with a session token gives the SDK's Authorization and headers, in its order."""
    vector = TOKEN_VECTORS[index]
    signed = vector["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    signer = Signer(
        vector["access_key"],
        vector["secret_key"],
        service=vector["service"],
        sign_date_nonce="x-jdcloud-date" in signed,
        session_token=vector["security_token"],
    )
    headers = signer.sign(
        method=vector["method"],
        host=vector["host"],
        path=vector["path"],
        query=vector["query"],
        region=vector["region"],
        at=datetime.strptime(vector["x-jdcloud-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
        nonce=vector["x-jdcloud-nonce"],
        body=vector["body"].encode(),
    )
    assert headers["Authorization"] == vector["authorization"]
    sent = [(k, v) for k, v in vector["sent_headers"].items() if k != "User-Agent"]
    assert list(headers.items()) == sent


@pytest.mark.parametrize("index", range(len(TOKEN_VECTORS)))
def test_security_token_vector_through_authorization(index: int) -> None:
    vector = TOKEN_VECTORS[index]
    signer = Signer(vector["access_key"], vector["secret_key"], service=vector["service"])
    authorization = signer.authorization(
        method=vector["method"],
        host=vector["host"],
        path=vector["path"],
        query=vector["query"],
        headers=vector["headers_at_signing_time"],
        body=vector["body"].encode(),
        region=vector["region"],
        date=vector["x-jdcloud-date"],
    )
    assert authorization == vector["authorization"]


def test_the_session_token_is_kept_out_of_repr() -> None:
    signer = Signer("TESTAK", "TESTSK", session_token="TOKEN-abc+/=")
    assert "TOKEN-abc" not in repr(signer)
    assert _sign(signer)["x-jdcloud-security-token"] == "TOKEN-abc+/="


# --- sign(): the headers to send ---------------------------------------------------------------


def _sent_without_user_agent(vector: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in vector["all_headers_sent"].items() if k != "User-Agent"]


def test_sign_gives_exactly_the_sdk_headers_of_t1() -> None:
    headers = _sign(Signer("TESTAK", "TESTSK"))
    assert list(headers.items()) == _sent_without_user_agent(_vector("T1"))


def test_sign_with_date_and_nonce_gives_exactly_the_sdk_headers_of_t2() -> None:
    headers = _sign(Signer("TESTAK", "TESTSK", sign_date_nonce=True))
    assert list(headers.items()) == _sent_without_user_agent(_vector("T2"))


def test_jdcloud2_always_signs_date_and_nonce() -> None:
    signer = Signer("TESTAK", "TESTSK", version="JDCLOUD2", sign_date_nonce=False)
    headers = _sign(signer)
    assert signer.sign_date_nonce
    assert headers["JDCLOUD2-HMAC-SHA256"] == "JDCLOUD2-HMAC-SHA256"
    assert (
        "SignedHeaders=content-type;host;x-jdcloud-date;x-jdcloud-nonce,"
        in (headers["Authorization"])
    )


@pytest.mark.parametrize("version", ["JDCLOUD3", "JDCLOUD2"])
@pytest.mark.parametrize("sign_date_nonce", [False, True])
@pytest.mark.parametrize("index", range(0, len(SDK_VECTORS), 7))
def test_sign_agrees_with_the_general_canonical_request(
    index: int, sign_date_nonce: bool, version: SignatureVersion
) -> None:
    """sign()'s precomputed fast path gives what authorization() gives for the same headers."""
    vector = SDK_VECTORS[index]
    signer = Signer("TESTAK", "TESTSK", version=version, sign_date_nonce=sign_date_nonce)
    body = vector["body"].encode()
    sent = signer.sign(
        method="GET",
        host=vector["host"],
        path=vector["path"],
        query=vector["query"],
        region=vector["region"],
        at=AT,
        nonce=NONCE,
        body=body,
    )
    signed = {"Content-Type": "application/json"}
    if signer.sign_date_nonce:
        signed |= {"x-jdcloud-date": DATE, "x-jdcloud-nonce": NONCE}
    expected = signer.authorization(
        method="GET",
        host=vector["host"].removesuffix(":443"),
        path=vector["path"],
        query=vector["query"],
        headers=signed,
        body=body,
        region=vector["region"],
        date=DATE,
    )
    assert sent["Authorization"] == expected
    assert sent["x-jdcloud-content-sha256"] == hashlib.sha256(body).hexdigest()


def test_sign_drops_a_default_port_like_the_sdk_reading_a_url() -> None:
    signer = Signer("TESTAK", "TESTSK")
    common: dict[str, Any] = dict(
        method="GET", path=IMAGE_PATH, query="", region="cn-north-1", at=AT, nonce=NONCE
    )
    plain = signer.sign(host="vm.jdcloud-api.com", **common)
    assert signer.sign(host="vm.jdcloud-api.com:443", **common) == plain
    assert signer.sign(host="vm.jdcloud-api.com:8443", **common) != plain


def test_the_scope_follows_the_utc_day_of_each_request() -> None:
    signer = Signer("TESTAK", "TESTSK")
    before = signer.sign(
        method="GET",
        host="vm.jdcloud-api.com",
        path=IMAGE_PATH,
        query="",
        region="cn-north-1",
        at=datetime(2024, 1, 2, 23, 59, 59, tzinfo=UTC),
        nonce=NONCE,
    )
    after = signer.sign(
        method="GET",
        host="vm.jdcloud-api.com",
        path=IMAGE_PATH,
        query="",
        region="cn-north-1",
        # 08:00 in Shanghai on the 3rd is still the 3rd in UTC: 00:00.
        at=datetime(2024, 1, 3, 8, 0, 0, tzinfo=timezone(timedelta(hours=8))),
        nonce=NONCE,
    )
    assert "Credential=TESTAK/20240102/cn-north-1/" in before["Authorization"]
    assert "Credential=TESTAK/20240103/cn-north-1/" in after["Authorization"]
    assert after["x-jdcloud-date"] == "20240103T000000Z"


def test_the_signing_key_is_cached_per_day_and_region() -> None:
    signer = Signer("TESTAK", "TESTSK")
    key = signer.signing_key("20240102", "cn-north-1")
    assert signer.signing_key("20240102", "cn-north-1") is key
    assert signer.signing_key("20240102", "cn-east-2") != key
    assert signer.signing_key("20240103", "cn-north-1") != key


def test_one_signer_signs_each_request_as_a_new_one_would() -> None:
    # The signer keeps the last second's date, the last host's header line and each key's
    # scope: a second, a host, a zone or a region that changes must each be seen.
    kept = Signer("TESTAK", "TESTSK")
    start = datetime(2024, 1, 2, 23, 59, 59, 100000, tzinfo=UTC)
    shanghai = timezone(timedelta(hours=8))
    requests = [
        ("vm.jdcloud-api.com", "cn-north-1", start),
        ("vm.jdcloud-api.com", "cn-north-1", start + timedelta(microseconds=800000)),
        ("vm.jdcloud-api.com", "cn-north-1", start + timedelta(seconds=1)),  # the next UTC day
        ("vm.jdcloud-api.com", "cn-east-2", start + timedelta(seconds=1)),
        ("127.0.0.1:8080", "cn-east-2", start + timedelta(seconds=1)),
        ("127.0.0.1:8080", "cn-east-2", (start + timedelta(seconds=1)).astimezone(shanghai)),
        ("vm.jdcloud-api.com", "cn-north-1", start),  # back to the first
    ]
    dates = []
    for host, region, at in requests:
        kwargs: dict[str, Any] = {"method": "GET", "host": host, "path": IMAGE_PATH, "query": "",
                                  "region": region, "at": at, "nonce": NONCE}  # fmt: skip
        headers = kept.sign(**kwargs)
        assert headers == Signer("TESTAK", "TESTSK").sign(**kwargs), (host, region, at)
        dates.append(headers["x-jdcloud-date"])
    assert dates[:3] == ["20240102T235959Z", "20240102T235959Z", "20240103T000000Z"]
    assert dates[5] == "20240103T000000Z"


def test_authorization_refuses_a_date_header_that_is_not_the_signing_date() -> None:
    with pytest.raises(ValueError, match="x-jdcloud-date"):
        Signer("TESTAK", "TESTSK").authorization(
            method="GET",
            host="vm.jdcloud-api.com",
            path=IMAGE_PATH,
            query="",
            headers={"X-Jdcloud-Date": "20240102T030406Z"},
            body=b"",
            region="cn-north-1",
            date=AT,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"access_key": "", "secret_key": "SK"}, "must not be empty"),
        ({"access_key": "AK", "secret_key": ""}, "must not be empty"),
        ({"access_key": "AK", "secret_key": "SK", "version": "JDCLOUD4"}, "unknown signature"),
    ],
)
def test_signer_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Signer(**kwargs)


def test_repr_of_signer_and_parsed_authorization_hide_secrets() -> None:
    signer = Signer("TESTAK", "TOPSECRETKEY", sign_date_nonce=True)
    authorization = _sign(signer)["Authorization"]
    signature = authorization.rsplit("=", 1)[1]
    assert "TOPSECRETKEY" not in repr(signer)
    assert "TESTAK" in repr(signer)
    assert signature not in repr(parse_authorization(authorization))


# --- canonical pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "20240102T030405Z"),
        (datetime(2024, 1, 2, 11, 4, 5, tzinfo=timezone(timedelta(hours=8))), "20240102T030405Z"),
        (datetime(2024, 1, 2, 3, 4, 5), "20240102T030405Z"),  # naive is taken as UTC
    ],
)
def test_format_date(at: datetime, expected: str) -> None:
    assert format_date(at) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("vm.jdcloud-api.com", "vm.jdcloud-api.com"),
        ("https://vm.jdcloud-api.com", "vm.jdcloud-api.com"),
        ("HTTP://127.0.0.1:8080", "127.0.0.1:8080"),
        (" vm.jdcloud-api.com:443 ", "vm.jdcloud-api.com:443"),
    ],
)
def test_canonical_host(host: str, expected: str) -> None:
    assert canonical_host(host) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (IMAGE_PATH, IMAGE_PATH),
        ("", "/"),
        ("v1", "/v1"),
        ("/v1//regions///cn-north-1/images/", "/v1/regions/cn-north-1/images/"),
        ("/v1/a%2Fb/c", "/v1/a/b/c"),
        ("/v1/a%zz/b", "/v1/a%25zz/b"),
        ("/v1/a+b/c d", "/v1/a%20b/c%20d"),
        ("/v1/中文:GET", "/v1/%E4%B8%AD%E6%96%87%3AGET"),
        ("/v1/-_.~", "/v1/-_.~"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert canonical_uri(path) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        (IMAGES_QUERY, "ids.1=img-b&ids.2=img-a&imageSource=public&pageNumber=2&pageSize=100"),
        ("ids.10=img-x&ids.2=img-y&ids.1=img-z", "ids.1=img-z&ids.10=img-x&ids.2=img-y"),
        ("a=1&a=0&b=", "a=0&a=1&b="),
        ("x&y=1", "y=1"),  # no "=": dropped
        ("=v&k=", "k="),  # empty key: dropped
        ("&&a=1&", "a=1"),
        ("k=%E4%B8%AD&z=a+b", "k=%E4%B8%AD&z=a%20b"),
        ("q=a/b&r=~._-", "q=a%2Fb&r=~._-"),
        ("a=b=c&d=1", "b%3Dc&d=1"),  # the SDK splits on every "=" and then loses the key
        ("a=b%3Dc", "a=b%3Dc"),
    ],
)
def test_canonical_query(query: str, expected: str) -> None:
    assert canonical_query(query) == expected


def test_canonical_request_skips_unsigned_headers_and_strips_values() -> None:
    text, signed = canonical_request(
        "GET",
        "vm.jdcloud-api.com",
        IMAGE_PATH,
        "",
        {
            "User-Agent": "x",
            "Authorization": "y",
            "Host": "ignored.example",
            "X-Extra": "  spaced   value  ",
        },
        b"{}",
    )
    assert signed == "host;x-extra"
    assert "\nhost:vm.jdcloud-api.com\nx-extra:spaced   value\n\nhost;x-extra\n" in text
    assert text.endswith("\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")


# --- parse_authorization -----------------------------------------------------------------------


def test_parse_authorization() -> None:
    parsed = parse_authorization(_vector("T2")["authorization"])
    assert parsed == ParsedAuthorization(
        algorithm="JDCLOUD3-HMAC-SHA256",
        access_key="TESTAK",
        date="20240102",
        region="cn-north-1",
        service="vm",
        terminator="jdcloud3_request",
        signed_headers=("content-type", "host", "x-jdcloud-date", "x-jdcloud-nonce"),
        signature="75634e6462e6c9165d5d11221fdfc89bb84ce29d56da12cd8ffc2efa2dfb7fff",
    )


GOOD = "JDCLOUD3-HMAC-SHA256 Credential=AK/20240102/cn-north-1/vm/jdcloud3_request"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Bearer abc", "Invalid authentication credentials"),
        ("JDCLOUD3-HMAC-SHA256", "lack of credential"),
        (f"{GOOD.split(' Credential')[0]} SignedHeaders=host, Signature=ab", "lack of credential"),
        (f"{GOOD}/extra, SignedHeaders=host, Signature=ab", "lack of credential"),
        (f"{GOOD}, Signature=ab", "lack of header signedHeaders"),
        (f"{GOOD}, SignedHeaders=host;;x, Signature=ab", "lack of header signedHeaders"),
        (f"{GOOD}, SignedHeaders=host", "Invalid authentication credentials"),
        (
            "JDCLOUD2-HMAC-SHA256 Credential=AK/20240102/cn-north-1/vm/jdcloud3_request, "
            "SignedHeaders=host, Signature=ab",
            "Invalid authentication credentials",
        ),
    ],
)
def test_parse_authorization_refuses_malformed_values(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_authorization(value)


# --- verify_request ----------------------------------------------------------------------------


def _received(signer: Signer, *, path: str = IMAGE_PATH, query: str = "") -> dict[str, str]:
    """The headers a server sees: what sign() gives plus what the HTTP client adds."""
    headers = signer.sign(
        method="GET",
        host="127.0.0.1:8080",
        path=path,
        query=query,
        region="cn-north-1",
        at=AT,
        nonce=NONCE,
    )
    return {
        "Host": "127.0.0.1:8080",
        "User-Agent": "crawler/0.1",
        "Accept-Encoding": "gzip, deflate",
        **headers,
    }


def _verify(
    headers: dict[str, str],
    *,
    path: str = IMAGE_PATH,
    query: str = "",
    body: bytes = b"",
    secrets: dict[str, str] = SECRETS,
) -> str | None:
    return verify_request(
        method="GET",
        host="127.0.0.1:8080",
        path=path,
        query=query,
        headers=headers,
        body=body,
        secret_for=secrets.get,
    )


SIGNERS = {
    "v3": Signer("TESTAK", "TESTSK"),
    "v3-date-nonce": Signer("TESTAK", "TESTSK", sign_date_nonce=True),
    "v2": Signer("TESTAK", "TESTSK", version="JDCLOUD2"),
}


@pytest.mark.parametrize("name", SIGNERS)
def test_verify_accepts_what_sign_produces(name: str) -> None:
    signer = SIGNERS[name]
    assert _verify(_received(signer)) is None
    assert _verify(_received(signer, query=IMAGES_QUERY), query=IMAGES_QUERY) is None


@pytest.mark.parametrize("name", SIGNERS)
def test_verify_looks_headers_up_case_insensitively(name: str) -> None:
    received = _received(SIGNERS[name])
    assert _verify({k.lower(): v for k, v in received.items()}) is None
    assert _verify({k.upper(): v for k, v in received.items()}) is None


def test_verify_accepts_the_sdk_t2_request_as_sent() -> None:
    vector = _vector("T2")
    assert (
        verify_request(
            method="GET",
            host="vm.jdcloud-api.com",
            path=IMAGE_PATH,
            query="",
            headers={"Host": "vm.jdcloud-api.com", **vector["all_headers_sent"]},
            body=b"",
            secret_for=SECRETS.get,
        )
        is None
    )


def _tampered_signature(headers: dict[str, str]) -> dict[str, str]:
    value = headers["Authorization"]
    last = "0" if value[-1] != "0" else "1"
    return headers | {"Authorization": value[:-1] + last}


def _without(name: str) -> Any:
    return lambda headers: {k: v for k, v in headers.items() if k != name}


@pytest.mark.parametrize("name", SIGNERS)
@pytest.mark.parametrize(
    ("change", "overrides", "message"),
    [
        (_tampered_signature, {}, SIGNATURE_MISMATCH),
        (lambda h: h, {"secrets": {"TESTAK": "WRONGSK"}}, SIGNATURE_MISMATCH),
        (lambda h: h, {"secrets": {"OTHERAK": "TESTSK"}}, INVALID_ACCESS_KEY),
        (_without("Authorization"), {}, LACK_AUTHORIZATION),
        (_without("x-jdcloud-date"), {}, LACK_DATE),
        (lambda h: h, {"path": IMAGE_PATH + "x"}, SIGNATURE_MISMATCH),
        (lambda h: h, {"query": "pageNumber=2"}, SIGNATURE_MISMATCH),
        (lambda h: h, {"body": b"{}"}, SIGNATURE_MISMATCH),
        (lambda h: h | {"Host": "127.0.0.1:8081"}, {}, SIGNATURE_MISMATCH),
        (lambda h: h | {"Content-Type": "text/plain"}, {}, SIGNATURE_MISMATCH),
        (_without("Content-Type"), {}, SIGNATURE_MISMATCH),
        (lambda h: h | {"x-jdcloud-date": "20240103T030405Z"}, {}, SIGNATURE_MISMATCH),
        (lambda h: h | {"x-jdcloud-date": "yesterday"}, {}, SIGNATURE_MISMATCH),
        (lambda h: h | {"Authorization": "Basic dTpw"}, {}, "Invalid authentication"),
        (
            lambda h: h | {"Authorization": h["Authorization"].split(", ")[0]},
            {},
            LACK_SIGNED_HEADERS,
        ),
        (
            lambda h: h | {"Authorization": "JDCLOUD3-HMAC-SHA256 SignedHeaders=host"},
            {},
            LACK_CREDENTIAL,
        ),
        (
            lambda h: h | {"Authorization": h["Authorization"][:-64] + "é" * 64},
            {},
            SIGNATURE_MISMATCH,
        ),
    ],
    ids=[
        "tampered-signature",
        "wrong-secret",
        "unknown-access-key",
        "no-authorization",
        "no-date",
        "changed-path",
        "changed-query",
        "changed-body",
        "changed-host",
        "changed-content-type",
        "no-content-type",
        "changed-date",
        "malformed-date",
        "other-scheme",
        "no-signed-headers",
        "no-credential",
        "non-ascii-signature",
    ],
)
def test_verify_rejects(name: str, change: Any, overrides: dict[str, Any], message: str) -> None:
    headers = change(_received(SIGNERS[name]))
    result = _verify(headers, **overrides)
    assert result is not None
    assert result.startswith(message)


def test_verify_rejects_a_changed_nonce_only_when_it_is_signed() -> None:
    for name, signed in [("v3", False), ("v3-date-nonce", True), ("v2", True)]:
        headers = _received(SIGNERS[name]) | {"x-jdcloud-nonce": "another"}
        assert (_verify(headers) == SIGNATURE_MISMATCH) is signed, name
