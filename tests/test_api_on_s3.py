"""
The HTTP API suite (``test_api_*.py``, modelled on the OCI conformance
suite) once more, against registries storing in S3 (SeaweedFS).

It runs in a child pytest with ``OCIREGISTRY_S3_*`` set: every registry
process the suite starts reads its storage from those variables, exactly as
a deployment configured through the environment does.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from registry_process import REPOSITORY_ROOT
from s3_server import ACCESS_KEY, BUCKET, SECRET_KEY, s3_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.ociregistry_only


def test_api_suite_passes_on_s3(s3_server, tmp_path):  # noqa: F811
    settings = s3_server.settings()
    env = dict(os.environ)
    env.pop("OCIREGISTRY_TEST_TARGET", None)
    env.update(
        {
            "OCIREGISTRY_S3_BUCKET": BUCKET,
            "OCIREGISTRY_S3_ENDPOINT": s3_server.endpoint,
            "OCIREGISTRY_S3_ACCESS_KEY": ACCESS_KEY,
            "OCIREGISTRY_S3_SECRET_KEY": SECRET_KEY,
            "OCIREGISTRY_S3_PREFIX": settings.prefix,
        }
    )
    modules = sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "tests", "test_api_*.py")))
    modules = [m for m in modules if not m.endswith("test_api_on_s3.py")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"), *modules],
        env=env,
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        timeout=600,
    )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-6000:] + result.stderr.decode(errors="replace")[-2000:]
    # The registries really stored in the bucket.
    status, listing = s3_server.request("GET", query=f"list-type=2&prefix={settings.prefix}/blobs/&max-keys=1")
    assert status == 200 and b"<Key>" in listing
