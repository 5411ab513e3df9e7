"""
The real Prometheus server (Debian's ``prometheus``) scraping a
``--workers 2`` registry every half second while skopeo pushes and pulls:
what its HTTP API answers is what an operator's dashboards and alerts see.
The request counts by route and code are those of the access log, the
storage metrics move, and killing a worker (the supervisor restarts it)
never makes a summed counter go down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from image_builder import OCILayout, http_request
from metrics_helpers import logged_requests, wait_for
from registry_process import RegistryProcess, descendants, free_port
from test_e2e_skopeo import SKOPEO, copy_args, skopeo, skopeo_env  # noqa: F401 (fixtures)

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.ociregistry_only,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (apt-get install prometheus)"),
    pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed"),
]

SCRAPE_INTERVAL = "500ms"
WAIT = 60.0  # seconds for Prometheus to have scraped what was done, on a loaded machine


class Prometheus:
    def __init__(self, directory, target: str):
        self.port = free_port()
        self.directory = directory
        config = directory / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL}, scrape_timeout: 400ms}}\n"
            "scrape_configs:\n"
            "  - job_name: ociregistry\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log_path = directory / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(directory),
            )

    def query(self, expression: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        try:
            result = self.query(expression)
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def by(self, expression: str, *labels: str) -> dict[tuple, float]:
        return {tuple(r["metric"].get(k) for k in labels): float(r["value"][1]) for r in self.query(expression)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _newest_scrape_after(prometheus: Prometheus, moment: float) -> bool:
    """Whether Prometheus scraped the registry (successfully) after ``moment`` (time.time())."""
    try:
        result = prometheus.query('timestamp(up{job="ociregistry"} == 1)')
    except OSError:
        return False
    return bool(result) and float(result[0]["value"][1]) > moment


def test_prometheus_sees_requests_storage_and_counters_that_survive_a_killed_worker(tmp_path, skopeo):  # noqa: F811
    metrics_port = free_port()
    registry = RegistryProcess(
        str(tmp_path / "data"),
        extra_args=["--workers", "2", "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1"],
    )
    registry.start()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    try:
        assert wait_for(lambda: "worker 1 serving" in registry.log(), timeout=30), registry.log()
        source = OCILayout(tmp_path / "source")
        source.add_image("v1", layers=3, layer_size=256 << 10, seed="prometheus")
        source.add_image("v2", layers=2, layer_size=64 << 10, seed="prometheus-2")
        for tag in ("v1", "v2"):
            skopeo(*copy_args(source.reference(tag), f"docker://{registry.host}/team/app:{tag}"))
        for tag in ("v1", "v2"):
            pulled = OCILayout(tmp_path / f"pulled-{tag}")
            skopeo(*copy_args(f"docker://{registry.host}/team/app:{tag}", pulled.reference(tag)))
        for _ in range(20):  # new connections: both workers answer some
            assert http_request("GET", f"{registry.url}/v2/team/app/manifests/missing").status == 404

        expected = logged_requests(registry.log())
        query = "sum by (handler, method, code) (registry_http_requests_total)"

        def matches():
            try:
                return prometheus.by(query, "handler", "method", "code") == expected
            except OSError:
                return False

        assert wait_for(matches, timeout=WAIT, interval=0.5), (
            prometheus.by(query, "handler", "method", "code")
            if prometheus.process.poll() is None
            else prometheus.log(),
            expected,
        )
        assert expected[("manifest", "PUT", "201")] == 2
        assert expected[("manifest", "GET", "404")] == 20
        # Both workers served: the sum is over every process.
        log = registry.log()
        assert "[worker 1 oci_registry.access" in log and "[oci_registry.access" in log
        # The storage moved, and the histograms are usable.
        assert prometheus.value('sum(registry_storage_action_seconds_count{driver="filesystem"})') > 0
        assert prometheus.value('sum(registry_storage_action_seconds_count{action="move"})') >= 1
        assert prometheus.value("sum(ociregistry_blob_bytes_received_total)") > 256 << 10
        quantile = prometheus.value(
            "histogram_quantile(0.5, sum by (le) (registry_http_request_duration_seconds_bucket{handler='manifest'}))"
        )
        assert quantile is not None and 0 < quantile < 60
        assert prometheus.value('ociregistry_build_info{version!=""}') == 1

        before = prometheus.value('sum(registry_http_requests_total{handler="manifest"})')
        workers = [pid for pid in descendants(registry.process.pid) if pid != registry.process.pid]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        assert wait_for(lambda: registry.log().count("worker 1 serving") == 2, timeout=30), registry.log_tail()
        killed_at = time.time()
        # Scraped after the restart: the dead worker's counts are still in the sum.
        assert wait_for(lambda: _newest_scrape_after(prometheus, killed_at), timeout=WAIT, interval=0.5)
        after = prometheus.value('sum(registry_http_requests_total{handler="manifest"})')
        assert after is not None and after >= before
        assert prometheus.value('resets(registry_http_requests_total{handler="manifest",code="404"}[5m])') == 0
        # And the restarted worker counts on top of them.
        for _ in range(10):
            assert http_request("GET", f"{registry.url}/v2/team/app/manifests/missing").status == 404
        assert wait_for(
            lambda: prometheus.value('sum(registry_http_requests_total{handler="manifest",code="404"})') == 30,
            timeout=WAIT,
            interval=0.5,
        ), prometheus.value('sum(registry_http_requests_total{handler="manifest",code="404"})')
    finally:
        prometheus.stop()
        registry.stop()
