"""Images copied into the registry and back out with ``skopeo copy``, one distinct image per repetition."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time

from ..client import HTTPError
from .base import Bench, Metric, Step

METRICS: list[Metric] = [
    ("skopeo_in_s", "skopeo copy oci: -> registry ({image})", "s", "lower"),
    ("skopeo_out_s", "skopeo copy registry -> oci: ({image})", "s", "lower"),
]


def skopeo(bench: Bench, *args) -> float:
    command = ["skopeo", "--policy", bench.data.policy, "copy", "--quiet", *args]
    t0 = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise HTTPError(f"skopeo failed: {result.stderr.strip()[-400:]}")
    return elapsed


def run(bench: Bench) -> None:
    d = bench.data
    ins, outs = [], []
    tags = iter(enumerate(d.layout_tags))

    def copy_in_and_out():
        i, tag = next(tags)
        remote = f"docker://127.0.0.1:{bench.r.port}/bench/skopeo{i}:latest"
        os.sync()
        ins.append(skopeo(bench, "--dest-tls-verify=false", f"oci:{d.layout}:{tag}", remote))
        out_dir = os.path.join(bench.r.dir, f"out{i}")
        try:
            outs.append(skopeo(bench, "--src-tls-verify=false", remote, f"oci:{out_dir}:latest"))
            verify_layout_copy(d.layout, tag, out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    bench.repeat("skopeo", len(d.layout_tags), copy_in_and_out)
    bench.results["skopeo_in_s"] = round(statistics.median(ins), 2)
    bench.results["skopeo_out_s"] = round(statistics.median(outs), 2)
    bench.notes["skopeo_in_s"] = "runs: " + ", ".join(f"{v:.2f}" for v in ins)
    bench.notes["skopeo_out_s"] = "runs: " + ", ".join(f"{v:.2f}" for v in outs)


def verify_layout_copy(layout: str, tag: str, out_dir: str) -> None:
    """The pulled layout holds the same manifest as the one pushed."""

    def manifest_digest(path, name):
        with open(os.path.join(path, "index.json")) as f:
            for m in json.load(f)["manifests"]:
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name:
                    return m["digest"]
        return None

    pushed, pulled = manifest_digest(layout, tag), manifest_digest(out_dir, "latest")
    if pushed is None or pushed != pulled:
        raise HTTPError(f"skopeo pulled manifest {pulled}, pushed {pushed}")


STEPS: list[Step] = [("skopeo", run)]
