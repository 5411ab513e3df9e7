"""
`IRegistry`: every operation the HTTP API (`oci_registry.api`) calls on the
registry, and so the seam where cross-cutting behaviour goes.

`oci_registry.registry.Registry` is the implementation over storage
(`ILocalRegistry` adds the primitives the pull-through cache stores
through, so that only `Registry` writes storage paths); the
pull-through cache (`oci_registry.proxy.ProxyRegistry`) and the observed
registry (`oci_registry.observe.ObservedRegistry`) wrap another `IRegistry`
and implement every method themselves, so that a method added here and
forgotten in a wrapper fails ``verifyObject`` in the tests rather than
slipping past the wrapper.

Every operation takes an optional ``caller`` (an
`oci_registry.identity.Caller`): who asks and from where.  The registry
itself decides nothing by it (the HTTP API has authorized the request
already); wrappers report it.

Each method is tagged with the access it needs, in the auth scopes' terms
(``"pull"``, ``"push"`` or ``"delete"``; see `access_of`): a read-only
wrapper refuses every method that is not ``"pull"``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRegistry(Interface):
    max_manifest_size = Attribute("The largest manifest accepted, in bytes (the API reads no more of a body).")
    min_chunk_length = Attribute(
        "The chunk size below which uploads cost the storage more (sent as OCI-Chunk-Min-Length), or None."
    )

    # ----------------------------------------------------------------- blobs

    def stat_blob(name, digest, head=False, caller=None):
        """
        Fire with the `BlobInfo` of a blob ``name`` holds (`BlobUnknown` if
        not).  ``head``: only the size is wanted (no download starts); else
        the caller goes on to read it (a GET).
        """

    def open_blob(name, digest, offset=0, length=None, caller=None):
        """Fire with an `IReader` of the blob from ``offset``; ``length``: how much will be read (None: all)."""

    def blob_redirect(name, digest, caller=None):
        """Fire with a URL clients may fetch ``name``'s blob from directly, or None (send the bytes)."""

    def delete_blob(name, digest, caller=None):
        """Unlink the blob from ``name`` (`BlobUnknown` if it does not hold it)."""

    def mount_blob(name, digest, source, caller=None):
        """Link a blob ``source`` holds into ``name``; fire with its `BlobInfo`, or None when ``source`` lacks it."""

    def adopt_blob(name, digest, caller=None):
        """Link a blob stored for any repository into ``name``; fire with its `BlobInfo`, or None."""

    # --------------------------------------------------------------- uploads

    def put_blob(name, digest, body, length=None, caller=None):
        """A monolithic upload: store ``body`` as the blob ``digest`` in ``name``; fire with its `BlobInfo`."""

    def start_upload(name, caller=None):
        """Open an upload session in ``name``; fire with its `UploadStatus`."""

    def upload_status(name, upload_id, caller=None):
        """Fire with the session's `UploadStatus` (`BlobUploadUnknown` if there is none)."""

    def append_upload(name, upload_id, body, start=None, length=None, caller=None):
        """Append ``body`` (a chunk starting at ``start``, when the client said); fire with the `UploadStatus`."""

    def finish_upload(name, upload_id, digest, body=None, caller=None):
        """Append the last chunk, verify ``digest`` and publish the blob; fire with its `BlobInfo`."""

    def cancel_upload(name, upload_id, caller=None):
        """Abandon the session and delete what it received."""

    # ------------------------------------------------------------- manifests

    def get_manifest(name, reference, head=False, accept=(), caller=None):
        """
        Fire with the `StoredManifest` under ``reference`` (a `Digest` or
        `Tag`); ``head``: without its bytes.  ``accept``: the client's
        Accept media types.
        """

    def put_manifest(name, reference, data, content_type, tags=(), caller=None):
        """Store a manifest under ``reference`` and tag it with ``tags`` too; fire with a `PushedManifest`."""

    def delete_manifest(name, reference, caller=None):
        """
        Delete a manifest (a `Digest`: with every tag pointing at it) or untag
        it (a `Tag`); fire with the tags that were removed.
        """

    # ------------------------------------------------------------- discovery

    def list_tags(name, limit=None, last=None, caller=None):
        """
        Fire with a `Page` of the tags of ``name`` after ``last``, sorted, at
        most ``limit`` (all, with None); `NameUnknown` if there is no such
        repository.
        """

    def catalog(limit=None, last=None, caller=None):
        """Fire with a `Page` of the repositories' names after ``last``, sorted, at most ``limit`` (all, with None)."""

    def referrers(name, subject, artifact_type=None, last=None, limit=1000, caller=None):
        """
        Fire with a `Page` of the descriptors (JSON objects) of the manifests
        whose subject is ``subject``, after the one whose digest is ``last``,
        at most ``limit``; ``Page.next`` is the ``last`` of the next page.
        """


class ILocalRegistry(IRegistry):
    """
    The registry over this process's own storage (`Registry`), with the
    primitives a pull-through cache keeps its copies through.  They are the
    only way anything but `Registry` changes what is stored, and they apply
    the checks a push does: a manifest is stored only as
    `verify_manifest` checked it (size, validity, its digest computed from
    its bytes), a blob only once its size and digest are verified
    (`receive_blob`).
    """

    storage = Attribute("The `IStorageDriver`, for what runs beside the registry (garbage collection, checks).")
    max_upload_size = Attribute("The largest blob accepted, in bytes (0: no limit).")

    def has_blob(name, digest):
        """Fire with whether ``name`` holds the blob."""

    def repository_exists(name):
        """Fire with whether anything is stored under ``name``."""

    def verify_manifest(data, content_type, algorithm="sha256"):
        """Fire with a `VerifiedManifest`: `TooLarge` past the limit, `ManifestInvalid` unless valid."""

    def store_manifest(name, manifest, tags=(), check_references=True):
        """Store a `VerifiedManifest` in ``name``, tagged with ``tags``; fire with a `PushedManifest`."""

    def set_tag(name, tag, digest):
        """Point ``tag`` at a manifest ``name`` holds (`ManifestUnknown` if it does not)."""

    def remove_tag(name, tag):
        """Remove ``tag``, if it is there."""

    def tag_checked_at(name, tag):
        """Fire with when an upstream last confirmed ``tag`` (`record_tag_check`), or None."""

    def record_tag_check(name, tag, when):
        """Record that an upstream confirmed ``tag`` at ``when`` (seconds since the epoch)."""

    def receive_blob(name, digest):
        """Fire with an `IncomingBlob` receiving the blob ``digest`` through an upload session of ``name``."""

    def sent_by(digest, upstream_url):
        """Fire with whether that upstream sent the blob's bytes (`IncomingBlob.publish`) and they are stored."""


_ACCESS = {
    "pull": (
        "stat_blob",
        "open_blob",
        "blob_redirect",
        "get_manifest",
        "list_tags",
        "catalog",
        "referrers",
    ),
    "push": (
        "mount_blob",
        "adopt_blob",
        "put_blob",
        "start_upload",
        "upload_status",
        "append_upload",
        "finish_upload",
        "cancel_upload",
        "put_manifest",
    ),
    "delete": ("delete_blob", "delete_manifest"),
}
for _access, _names in _ACCESS.items():
    for _name in _names:
        IRegistry[_name].setTaggedValue("access", _access)
del _access, _names, _name


def access_of(interface, name: str) -> str | None:
    """The access (``"pull"``, ``"push"``, ``"delete"``) an interface's method ``name`` needs; None if untagged."""
    return interface[name].queryTaggedValue("access")


def operations(interface, access: str | None = None) -> list[str]:
    """The names of the interface's methods (every one, or those needing ``access``), sorted."""
    return sorted(
        name
        for name in interface.names(all=True)
        if callable(getattr(interface[name], "getSignatureInfo", None))
        and (access is None or access_of(interface, name) == access)
    )
