"""`pip install .` installs the package and the twistd plugin."""

import os
import subprocess
import sys
import zipfile

from oci_registry import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_twistd_plugin(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
        check=True,
        timeout=300,
    )
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    assert wheel.startswith(f"ociregistry-{__version__}-")  # setup.py reads the package's version
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "twisted/plugins/ociregistry_plugin.py" in names
    # A namespace: shipping twisted/__init__.py would shadow Twisted itself.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "oci_registry/api/app.py" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(tmp_path / wheel)],
        check=True,
        timeout=300,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ociregistry" in result.stdout, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "ociregistry", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--listen" in result.stdout and "--data-dir" in result.stdout, result.stdout + result.stderr
