"""ociregistry: a container registry speaking the OCI Distribution Specification, on Twisted."""

__version__ = "0.1.0"  # the one place the version is written: setup.py and --version read it
