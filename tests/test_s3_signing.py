"""
SigV4 against the worked examples in the Amazon S3 API reference
(sig-v4-header-based-auth, sigv4-query-string-auth) and the signing key
derivation example of the AWS general reference.
"""

import hashlib
from datetime import datetime, timedelta, timezone

from oci_registry.storage.sigv4 import EMPTY_SHA256, Credentials, presign, sign_headers, signing_key

CREDENTIALS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
NOW = datetime(2013, 5, 24, tzinfo=timezone.utc)
HOST = "examplebucket.s3.amazonaws.com"


def signature(headers):
    return headers["Authorization"].rsplit("Signature=", 1)[1]


def test_get_object():
    headers = sign_headers(
        CREDENTIALS, "us-east-1", "GET", HOST, "/test.txt", [], {"Range": "bytes=0-9"}, EMPTY_SHA256, NOW
    )
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date," in headers["Authorization"]
    assert signature(headers) == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def test_put_object_with_a_path_to_encode():
    body = b"Welcome to Amazon S3."
    headers = sign_headers(
        CREDENTIALS,
        "us-east-1",
        "PUT",
        HOST,
        "/test$file.text",
        [],
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        hashlib.sha256(body).hexdigest(),
        NOW,
    )
    assert signature(headers) == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"


def test_subresource_and_query():
    lifecycle = sign_headers(CREDENTIALS, "us-east-1", "GET", HOST, "/", [("lifecycle", "")], {}, EMPTY_SHA256, NOW)
    assert signature(lifecycle) == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    listing = sign_headers(
        CREDENTIALS, "us-east-1", "GET", HOST, "/", [("prefix", "J"), ("max-keys", "2")], {}, EMPTY_SHA256, NOW
    )
    assert signature(listing) == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"


def test_presigned_url():
    query = presign(CREDENTIALS, "us-east-1", "GET", HOST, "/test.txt", 86400, now=NOW)
    assert query == (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
        "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_session_token_is_signed():
    with_token = Credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key, "TOKEN")
    headers = sign_headers(with_token, "us-east-1", "GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, NOW)
    assert headers["x-amz-security-token"] == "TOKEN"
    assert "x-amz-security-token" in headers["Authorization"]
    assert "TOKEN" not in repr(with_token)


def test_signing_key_derivation():
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_the_signing_key_is_derived_once_a_day():
    signing_key.cache_clear()
    for second in range(5):
        when = NOW + timedelta(seconds=second)
        headers = sign_headers(CREDENTIALS, "us-east-1", "GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, when)
        assert headers["x-amz-date"] == when.strftime("%Y%m%dT%H%M%SZ")
    presign(CREDENTIALS, "us-east-1", "GET", HOST, "/test.txt", 60, now=NOW)
    assert signing_key.cache_info().misses == 1
    sign_headers(CREDENTIALS, "us-east-1", "GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, NOW + timedelta(days=1))
    sign_headers(CREDENTIALS, "eu-west-1", "GET", HOST, "/test.txt", [], {}, EMPTY_SHA256, NOW)
    assert signing_key.cache_info().misses == 3
    # The cached key still signs as the published example does.
    test_get_object()
