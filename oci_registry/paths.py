"""
Every storage path the registry uses, in one place.

    blobs/<alg>/<hex[:2]>/<hex>/data                 blob bytes, once per digest
    blobs/<alg>/<hex[:2]>/<hex>/upstreams/<key>      a pull-through cache's upstream sent
                                                     these bytes (the file holds its URL)
    blobs/<alg>/<hex[:2]>/<hex>/referenced           random bytes, rewritten when a request
                                                     relies on an old blob (see gc.py)
    blobs/<alg>/<hex[:2]>/<hex>/quarantine           the bytes, while a garbage collection
                                                     decides whether to delete them
    repositories/<name>/_layers/<alg>/<hex>/link     the blob is in <name> (its digest
                                                     and size: see links.py)
    repositories/<name>/_layers/<alg>/<hex>/quarantine
                                                     the link, while a garbage collection
                                                     deletes the blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>/link
                                                     the manifest is in <name>; the
                                                     link holds its media type, size
                                                     and (small ones) bytes: links.py
    repositories/<name>/_manifests/tags/<tag>/current/link
                                                     the digest the tag points at
    repositories/<name>/_manifests/tags/<tag>/checked
                                                     a cached tag: when the upstream
                                                     last confirmed it (proxy only)
    repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>
                                                     a referrer's descriptor (JSON),
                                                     under its subject's digest
    repositories/<name>/_uploads/<id>/data           an upload's bytes so far (empty when it
                                                     starts: the session is there while it is)
    repositories/<name>/_uploads/<id>/startedat      marks a session an earlier release started
    fills/<key>/<alg>/<hex>/claim-<n>                a pull-through cache's process fetching
                                                     the blob from the upstream <key> (JSON:
                                                     its lease; see proxy/claim.py)
    notifications/endpoints/<endpoint>/pending/<batch>
                                                     events waiting for delivery to the
                                                     endpoint (JSON lines; see notifications/)
    notifications/endpoints/<endpoint>/dead/<batch>  events given up on (dead letters)
    notifications/endpoints/<endpoint>/lease/<generation>
                                                     which process delivers the endpoint's
                                                     events, and until when
    notifications/endpoints/<endpoint>/claims/<owner>-<generation>
                                                     a lease being taken
    notifications/repositories/<name>/_created       the repository's creation was announced
    catalog/repositories/<name, "/" as ".">          an empty file: the repository holds a manifest
                                                     or a blob; kept on S3 only, where the catalog
                                                     is read from these (see catalog.py)
    catalog/complete                                 every repository of the store has its file
                                                     in catalog/repositories/
    _health/<id>                                     a readiness probe's file, for a moment:
                                                     written, read back and deleted

Repository names never contain a component starting with ``_``, so the
registry's own folders cannot collide with a nested repository.
"""

from __future__ import annotations

import hashlib

from .reference import Digest, Name, Tag

BLOBS = "blobs"
REPOSITORIES = "repositories"
FILLS = "fills"
NOTIFICATIONS = "notifications"
CATALOG = "catalog"
HEALTH = "_health"  # outside blobs/ and repositories/: garbage collection never looks here


def blob_data(digest: Digest) -> str:
    return f"{blob_folder(digest)}/data"


def blob_folder(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_referenced(digest: Digest) -> str:
    return f"{blob_folder(digest)}/referenced"


def blob_quarantine(digest: Digest) -> str:
    return f"{blob_folder(digest)}/quarantine"


def blob_upstreams(digest: Digest) -> str:
    """The folder of `blob_upstream` records of one blob."""
    return f"{blob_folder(digest)}/upstreams"


def blob_upstream(digest: Digest, upstream_url: str) -> str:
    """Marks that the upstream at ``upstream_url`` sent the blob's bytes to a pull-through cache (proxy only)."""
    key = hashlib.sha256(upstream_url.encode()).hexdigest()[:32]
    return f"{blob_upstreams(digest)}/{key}"


def fill_claim(digest: Digest, upstream_url: str, generation: int) -> str:
    """
    A claim on fetching the blob from the upstream at ``upstream_url``; a
    claim whose lease ran out is taken over by creating the next generation.
    """
    key = hashlib.sha256(upstream_url.encode()).hexdigest()[:32]
    return f"{FILLS}/{key}/{digest.algorithm}/{digest.hex}/claim-{generation}"


def repository(name: Name) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: Name, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/link"


def layer_quarantine(name: Name, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/quarantine"


def layers(name: Name) -> str:
    return f"{REPOSITORIES}/{name}/_layers"


def manifest_link(name: Name, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.hex}/link"


def manifest_revisions(name: Name) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions"


def tags(name: Name) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_link(name: Name, tag: Tag) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}/current/link"


def tag_folder(name: Name, tag: Tag | str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}"


def tag_checked(name: Name, tag: Tag) -> str:
    """When a pull-through cache last confirmed the tag upstream (seconds since the epoch)."""
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}/checked"


def referrers(name: Name, subject: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer(name: Name, subject: Digest, digest: Digest) -> str:
    return f"{referrers(name, subject)}/{digest.algorithm}-{digest.hex}"


def upload(name: Name, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


def upload_data(name: Name, upload_id: str) -> str:
    return f"{upload(name, upload_id)}/data"


def upload_started(name: Name, upload_id: str) -> str:
    return f"{upload(name, upload_id)}/startedat"


def notification_endpoints() -> str:
    """The folder of every endpoint's outbox (one folder per endpoint name)."""
    return f"{NOTIFICATIONS}/endpoints"


def notification_pending(endpoint: str) -> str:
    return f"{NOTIFICATIONS}/endpoints/{endpoint}/pending"


def notification_dead(endpoint: str) -> str:
    return f"{NOTIFICATIONS}/endpoints/{endpoint}/dead"


def notification_lease(endpoint: str) -> str:
    return f"{NOTIFICATIONS}/endpoints/{endpoint}/lease"


def notification_claims(endpoint: str) -> str:
    return f"{NOTIFICATIONS}/endpoints/{endpoint}/claims"


def repository_announced(name: str) -> str:
    """Marks that an ``ociregistry.repository.created`` event was recorded for the repository."""
    return f"{NOTIFICATIONS}/repositories/{name}/_created"


def catalog_entries() -> str:
    """The folder of every repository's `catalog_entry`: one flat folder, its files in the catalog's order."""
    return f"{CATALOG}/repositories"


def catalog_entry(name: Name | str) -> str:
    """
    The file that lists ``name`` in the catalog: one file in one folder,
    whose name is the repository's with ``/`` written ``.``, ``.`` written
    ``-`` and ``-`` written ``,`` (``library/alpine`` is ``library.alpine``).
    Each character moves one place down, to a place no other character of a
    name takes, so the files' byte order is the catalog's (``a-b`` < ``a/b``
    < ``a0``) on any store, one that lists by key (S3) or folder by folder
    (SeaweedFS) alike, and a name keeps its length (a file name's limit is
    a name's: 255).
    """
    return f"{CATALOG}/repositories/{catalog_key(str(name))}"


_TO_KEY = str.maketrans("-./", ",-.")
_FROM_KEY = str.maketrans(",-.", "-./")


def catalog_key(text: str) -> str:
    """A repository name (or any text of its characters) as the name of its `catalog_entry`."""
    return text.translate(_TO_KEY)


def catalog_name(key: str) -> str:
    """The repository name a `catalog_entry` file's name stands for (the reverse of `catalog_key`)."""
    return key.translate(_FROM_KEY)


def catalog_complete() -> str:
    """Present once every repository of the store has its `catalog_entry` (see `oci_registry.catalog`)."""
    return f"{CATALOG}/complete"


def health_probe(probe_id: str) -> str:
    """A readiness probe's file (see `oci_registry.health`)."""
    return f"{HEALTH}/{probe_id}"
