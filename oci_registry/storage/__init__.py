"""Storage drivers: the interface and the adapters that implement it."""

from .interfaces import IReader, IStorageDriver, IWriter, PathNotFound, StorageFull

__all__ = ["IReader", "IStorageDriver", "IWriter", "PathNotFound", "StorageFull"]
