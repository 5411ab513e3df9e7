"""The grammar of names, tags and digests (distribution-spec)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oci_registry.errors import DigestInvalid, NameInvalid, TagInvalid
from oci_registry.reference import Digest, Name, Tag, parse_reference

GOOD_NAMES = ["a", "library/alpine", "a/b/c/d", "my-app", "a.b_c__d--e", "0", "x" * 255]
BAD_NAMES = [
    "",
    "A",
    "a/",
    "/a",
    "a//b",
    "..",
    "a/../b",
    "_a",
    "a_",
    "a/_uploads",
    "a___b",
    "a..b",
    "a/-b",
    "x" * 256,
    "a b",
    "a/b\x00",
]


@pytest.mark.parametrize("text", GOOD_NAMES)
def test_good_names(text):
    assert str(Name.parse(text)) == text


@pytest.mark.parametrize("text", BAD_NAMES)
def test_bad_names(text):
    with pytest.raises(NameInvalid):
        Name.parse(text)


@pytest.mark.parametrize("text", ["latest", "v1.0.0", "_x", "A-b_c.d", "a" * 128])
def test_good_tags(text):
    assert str(Tag.parse(text)) == text


@pytest.mark.parametrize("text", ["", ".x", "-x", "a" * 129, "a/b", "a:b", "a b"])
def test_bad_tags(text):
    with pytest.raises(TagInvalid):
        Tag.parse(text)


def test_digests():
    d = Digest.of(b"hello")
    assert str(d) == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert Digest.parse(str(d)) == d
    d512 = Digest.of(b"hello", "sha512")
    assert Digest.parse(str(d512)) == d512


@pytest.mark.parametrize(
    "text",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha256" + "0" * 64,
        "sha512:" + "0" * 64,
        ":" + "0" * 64,
        "sha256:" + "0" * 65,
        "sha256:" + "g" * 64,
    ],
)
def test_bad_digests(text):
    with pytest.raises(DigestInvalid):
        Digest.parse(text)


def test_reference_is_digest_or_tag():
    assert isinstance(parse_reference("latest"), Tag)
    assert isinstance(parse_reference("sha256:" + "0" * 64), Digest)
    with pytest.raises(DigestInvalid):
        parse_reference("sha256:nope")


@given(st.text(max_size=300))
def test_no_name_reaches_outside(text):
    """Whatever parses as a name is a relative path of plain components."""
    try:
        name = Name.parse(text)
    except NameInvalid:
        return
    parts = str(name).split("/")
    assert all(p and p not in (".", "..") and not p.startswith("_") for p in parts)
