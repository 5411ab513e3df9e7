"""
The storage drivers by name: which adapter a configuration's ``storage``
section asks for, and building it.  Only this module (for the composition
root, `oci_registry.compose`) names the adapters; everything else holds an
`IStorageDriver`.
"""

from __future__ import annotations

from .interfaces import IStorageDriver


def build_driver(settings, data_dir: str, reactor) -> IStorageDriver:
    """The driver for ``settings`` (the config's ``storage``; None: the filesystem under ``data_dir``)."""
    if settings is not None:
        from .s3 import S3Driver

        return S3Driver(settings, reactor=reactor)
    from .filesystem import FilesystemDriver

    return FilesystemDriver(data_dir, reactor=reactor)
