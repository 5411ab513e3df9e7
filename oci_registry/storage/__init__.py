"""Storage drivers: the interface and the adapters that implement it."""

from .filesystem import FilesystemDriver
from .interfaces import IReader, IStorageDriver, IWriter, PathNotFound, StorageFull

__all__ = ["FilesystemDriver", "IReader", "IStorageDriver", "IWriter", "PathNotFound", "StorageFull"]
