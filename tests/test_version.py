"""``ociregistry --version`` and ``twistd ociregistry --version`` print the one version the package carries."""

from __future__ import annotations

import re

import pytest

from oci_registry import __version__
from test_startup import CLI, TWISTD, run

pytestmark = pytest.mark.ociregistry_only


@pytest.mark.parametrize("command", [[*CLI, "--version"], [*TWISTD, "ociregistry", "--version"]], ids=["cli", "twistd"])
def test_version_is_printed(tmp_path, command):
    status, output = run(command, tmp_path)
    assert status == 0, output
    assert output == f"ociregistry {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
