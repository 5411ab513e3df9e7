"""
``--metrics``: what an operator's Prometheus reads at ``/metrics`` of a real
registry process while skopeo pushes and pulls, a pull-through cache pulls
from a second registry, garbage collection runs and logins fail.  The
request counts are compared with the access log line by line; no digest,
user or repository appears unless the operator asked for the repository.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from auth_helpers import basic, call, push_blob, push_image, write_htpasswd
from image_builder import OCILayout, http_request
from metrics_helpers import by_labels, logged_requests, metrics_text, scrape, total, wait_for
from oci_registry.config import Config, ConfigError
from oci_registry.metrics import MetricsConfig
from oci_registry.metrics.http import route_of
from registry_process import RegistryProcess, descendants, free_port
from test_e2e_skopeo import ACCEPT_ALL, SKOPEO, copy_args, skopeo, skopeo_env  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ociregistry_only

needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed")


def metrics_registry(tmp_path, name: str = "registry", config: str = "", extra_args=(), metrics: str | None = None):
    port = free_port()
    listen = metrics or f"tcp:{port}:interface=127.0.0.1"
    path = tmp_path / f"{name}.yaml"
    path.write_text(config)
    process = RegistryProcess(
        str(tmp_path / name), config=str(path), extra_args=["--metrics", listen, *extra_args]
    ).start()
    process.metrics_port = port
    return process


# ------------------------------------------------------------- config, names


def test_metrics_config_from_the_yaml_and_the_option(tmp_path):
    assert Config().metrics is None  # off by default
    path = tmp_path / "c.yaml"
    path.write_text("metrics: tcp:9100:interface=127.0.0.1\n")
    assert Config.load(str(path)).metrics == MetricsConfig(listen="tcp:9100:interface=127.0.0.1")
    path.write_text("metrics: {listen: 'tcp:9101', repository_label: true}\n")
    config = Config.load(str(path), metrics="tcp:9102")  # the option wins
    assert config.metrics == MetricsConfig(listen="tcp:9102")
    config = Config.load(str(path))
    assert config.metrics == MetricsConfig(listen="tcp:9101", repository_label=True)
    assert Config.from_dict(config.to_dict()) == config  # what a worker process gets
    for bad in ("{listen: 9100}", "{endpoint: tcp:9100}", "{listen: tcp:1, repository_label: maybe}", "[tcp:1]"):
        path.write_text(f"metrics: {bad}\n")
        with pytest.raises(ConfigError, match="^metrics: "):
            Config.load(str(path))


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/v2/", ("base", None)),
        (b"/v2", ("base", None)),
        (b"/v2/_catalog", ("catalog", None)),
        (b"/v2/a/b/blobs/sha256:" + b"0" * 64, ("blob", "a/b")),
        (b"/v2/a/blobs/uploads/", ("blob_upload", "a")),
        (b"/v2/a/blobs/uploads/3f2e", ("blob_upload_chunk", "a")),
        (b"/v2/blobs/blobs/blobs/x", ("blob", "blobs/blobs")),
        (b"/v2/a/manifests/latest", ("manifest", "a")),
        (b"/v2/a/tags/list", ("tags", "a")),
        (b"/v2/a/referrers/sha256:00", ("referrers", "a")),
        (b"/token", ("token", None)),
        (b"/readyz", ("health", None)),
        (b"/v2/a/nothing", ("other", None)),
        (b"/etc/passwd", ("other", None)),
    ],
)
def test_handler_labels_are_route_names(path, route):
    assert route_of(path) == route


# ------------------------------------------------------------------ requests


@needs_skopeo
def test_pushes_and_pulls_are_counted_by_route_and_status_as_the_access_log_shows(tmp_path, skopeo):  # noqa: F811
    registry = metrics_registry(tmp_path)
    try:
        source = OCILayout(tmp_path / "source")
        image = source.add_image("v1", layers=3, layer_size=256 << 10, seed="metrics")
        skopeo(*copy_args(source.reference("v1"), f"docker://{registry.host}/team/app:v1"))
        pulled = OCILayout(tmp_path / "pulled")
        skopeo(*copy_args(f"docker://{registry.host}/team/app:v1", pulled.reference("v1")))
        assert http_request("GET", f"{registry.url}/v2/team/app/manifests/nope").status == 404
        assert http_request("GET", f"{registry.url}/v2/team/app/tags/list").status == 200

        def counted():
            samples = scrape(registry.metrics_port)
            expected = logged_requests(registry.log())
            return (
                samples
                if by_labels(samples, "registry_http_requests_total", "handler", "method", "code") == expected
                else None
            )

        samples = wait_for(counted, timeout=10)
        assert samples, (
            by_labels(scrape(registry.metrics_port), "registry_http_requests_total", "handler", "method", "code"),
            logged_requests(registry.log()),
        )
        assert total(samples, "registry_http_requests_total", handler="manifest", method="PUT", code="201") == 1
        assert total(samples, "registry_http_requests_total", handler="manifest", code="404") == 1
        assert total(samples, "registry_http_request_duration_seconds_count", handler="blob", method="GET") >= 4
        assert total(samples, "registry_http_in_flight_requests") == 0
        sizes = sum(layer.size for layer in image.layers) + len(image.config_bytes)
        assert total(samples, "ociregistry_blob_bytes_received_total") >= sizes
        assert total(samples, "ociregistry_blob_bytes_sent_total") >= sizes
        assert (
            total(samples, "registry_http_request_size_bytes_sum", handler="blob_upload_chunk")
            + total(samples, "registry_http_request_size_bytes_sum", handler="blob_upload")
            >= sizes
        )
        # The storage was timed, action by action, and nothing failed.
        assert total(samples, "registry_storage_action_seconds_count", driver="filesystem", action="open_writer") >= 4
        assert total(samples, "registry_storage_action_seconds_count", driver="filesystem", action="read_bytes") > 0
        assert total(samples, "ociregistry_storage_errors_total") == 0
        assert total(samples, "ociregistry_build_info") == 1
        text = metrics_text(registry.metrics_port)[2]
        # Bounded labels: no digest, no repository, no upload id, no path.
        assert "sha256" not in text and "team/app" not in text and "/v2" not in text
        assert 'repository="' not in text
    finally:
        registry.stop()


def test_the_repository_is_a_label_only_when_asked_for(tmp_path):
    port = free_port()
    registry = RegistryProcess(
        str(tmp_path / "data"),
        config=_write(
            tmp_path / "c.yaml", f"metrics: {{listen: 'tcp:{port}:interface=127.0.0.1', repository_label: true}}\n"
        ),
    ).start()
    try:
        assert push_image(registry.url, "team/labelled", "v1", {}).status == 201
        samples = scrape(port)
        assert total(samples, "registry_http_requests_total", handler="manifest", repository="team/labelled") == 1
        assert "sha256" not in metrics_text(port)[2]
    finally:
        registry.stop()


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_the_metrics_listener_serves_health_checks_and_nothing_else(tmp_path):
    registry = metrics_registry(tmp_path)
    try:
        status, headers, text = metrics_text(registry.metrics_port)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE registry_http_requests_total counter" in text
        assert metrics_text(registry.metrics_port, "/healthz")[:1] == (200,)
        status, _, body = metrics_text(registry.metrics_port, "/readyz")
        assert status == 200 and '"ready"' in body
        assert metrics_text(registry.metrics_port, "/v2/")[0] == 404  # not the registry
        assert http_request("GET", f"{registry.url}/metrics").status == 404  # and not on the registry's port
        assert "metrics on tcp:" in registry.log()
    finally:
        registry.stop()


def test_a_metrics_endpoint_that_cannot_be_used_stops_the_start_with_one_line(tmp_path):
    taken = RegistryProcess(str(tmp_path / "first")).start()
    try:
        registry = RegistryProcess(
            str(tmp_path / "second"), extra_args=["--metrics", f"tcp:{taken.port}:interface=127.0.0.1"]
        )
        with pytest.raises(RuntimeError, match="exited with"):
            registry.start(timeout=20)
        assert f"cannot listen on tcp:{taken.port}" in registry.log()
        assert "Traceback" not in registry.log()
    finally:
        taken.stop()


# ---------------------------------------------------------------------- auth


def test_failed_logins_and_rate_limit_refusals_are_counted(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    port = free_port()
    config = _write(
        tmp_path / "c.yaml",
        f"metrics: 'tcp:{port}:interface=127.0.0.1'\n"
        "auth:\n  htpasswd: htpasswd\n  max_failed_logins: 3\n"
        "  access: [{repository: '**', pull: [alice], push: [alice]}]\n",
    )
    registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
    try:
        assert call(registry.url, "GET", "/v2/").status == 401  # anonymous: a challenge, not a failure
        assert call(registry.url, "GET", "/v2/", headers=basic("alice", "right")).status == 200
        statuses = [call(registry.url, "GET", "/v2/", headers=basic("alice", "wrong")).status for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        samples = scrape(port)
        assert total(samples, "ociregistry_auth_failures_total") == 3
        assert total(samples, "ociregistry_rate_limited_requests_total") == 2
        # Anonymous 401s (this one and the start-up probe's) are requests like any other.
        logged = logged_requests(registry.log())
        assert (
            total(samples, "registry_http_requests_total", handler="base", code="401") == logged[("base", "GET", "401")]
        )
        assert logged[("base", "GET", "401")] >= 4
        assert "alice" not in metrics_text(port)[2]
    finally:
        registry.stop()


# --------------------------------------------------------------------- proxy


def test_a_pull_through_moves_the_proxy_metrics(tmp_path):
    upstream = RegistryProcess(str(tmp_path / "upstream")).start()
    port = free_port()
    proxy = RegistryProcess(
        str(tmp_path / "proxy"),
        config=_write(
            tmp_path / "proxy.yaml",
            f"metrics: 'tcp:{port}:interface=127.0.0.1'\n"
            f"proxies: [{{prefix: hub, url: '{upstream.url}', tag_ttl: 1h}}]\n",
        ),
    ).start()
    try:
        assert push_image(upstream.url, "team/app", "v1", {}, seed="proxied").status == 201
        manifest = call(
            proxy.url,
            "GET",
            "/v2/hub/team/app/manifests/v1",
            headers={"Accept": ACCEPT_ALL},
        )
        assert manifest.status == 200
        document = json.loads(manifest.body)
        blobs = [document["config"], *document["layers"]]
        for descriptor in blobs:
            assert call(proxy.url, "GET", f"/v2/hub/team/app/blobs/{descriptor['digest']}").status == 200

        def moved():
            samples = scrape(port)
            return (
                samples
                if total(samples, "registry_proxy_pulled_bytes_total", type="blob") >= sum(d["size"] for d in blobs)
                else None
            )

        samples = wait_for(moved, timeout=10)
        assert samples, scrape(port)
        assert total(samples, "registry_proxy_misses_total", type="manifest") == 1
        assert total(samples, "registry_proxy_misses_total", type="blob") == len(blobs)
        assert total(samples, "registry_proxy_pulled_bytes_total", type="manifest") == len(manifest.body)
        assert total(samples, "registry_proxy_pulled_bytes_total", type="blob") == sum(d["size"] for d in blobs)
        assert total(samples, "registry_proxy_hits_total") == 0
        # Again: from the cache.
        assert (
            call(
                proxy.url,
                "GET",
                "/v2/hub/team/app/manifests/v1",
                headers={"Accept": ACCEPT_ALL},
            ).status
            == 200
        )
        for descriptor in blobs:
            assert call(proxy.url, "GET", f"/v2/hub/team/app/blobs/{descriptor['digest']}").status == 200
        samples = scrape(port)
        assert total(samples, "registry_proxy_hits_total", type="manifest") == 1
        assert total(samples, "registry_proxy_hits_total", type="blob") == len(blobs)
        assert total(samples, "registry_proxy_requests_total") == 2 * (1 + len(blobs))
        # The upstream gone: a manifest by digest not cached is an upstream error.
        upstream.stop()
        missing = "sha256:" + "1" * 64
        assert call(proxy.url, "GET", f"/v2/hub/team/app/manifests/{missing}").status == 503
        assert total(scrape(port), "ociregistry_proxy_upstream_errors_total", type="manifest") == 1
    finally:
        proxy.stop()
        upstream.stop()


# ------------------------------------------------------------------------ gc


def test_scheduled_garbage_collection_is_counted(tmp_path):
    port = free_port()
    registry = RegistryProcess(
        str(tmp_path / "data"),
        config=_write(
            tmp_path / "c.yaml",
            f"metrics: 'tcp:{port}:interface=127.0.0.1'\ngc_interval: 2s\ngc_grace: 1s\n",
        ),
    ).start()
    try:
        orphan = os.urandom(5000)
        assert push_blob(registry.url, "team/junk", orphan, {}).status == 201  # referenced by no manifest

        def collected():
            samples = scrape(port)
            return samples if total(samples, "ociregistry_gc_blobs_deleted_total") >= 1 else None

        samples = wait_for(collected, timeout=30)
        assert samples, scrape(port)
        assert total(samples, "ociregistry_gc_runs_total", result="ok") >= 1
        assert total(samples, "ociregistry_gc_runs_total", result="failed") == 0
        assert total(samples, "ociregistry_gc_bytes_freed_total") >= len(orphan)
        assert total(samples, "ociregistry_gc_duration_seconds_count") >= 1
        assert total(samples, "ociregistry_gc_last_success_timestamp_seconds") > 1.7e9
    finally:
        registry.stop()


# ------------------------------------------------------------------- workers


def test_with_workers_one_scrape_sums_them_and_a_killed_worker_counts_on(tmp_path):
    registry = metrics_registry(tmp_path, extra_args=["--workers", "2"])
    try:
        assert wait_for(lambda: "worker 1 serving" in registry.log(), timeout=20)
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert http_request("GET", f"{registry.url}/v2/").status == 200
        assert wait_for(
            lambda: (
                "oci_registry.access#info] 127.0.0.1" in registry.log()
                and "[worker 1 oci_registry.access" in registry.log()
            ),
            timeout=10,
        )
        logged = logged_requests(registry.log())[("base", "GET", "200")]
        assert logged >= 40

        def base_200():
            return total(scrape(registry.metrics_port), "registry_http_requests_total", handler="base", code="200")

        # Worker 1 adds what it counted to the shared files every second.
        assert wait_for(lambda: base_200() == logged, timeout=10), (base_200(), logged)
        before = base_200()
        workers = [pid for pid in descendants(registry.process.pid) if pid != registry.process.pid]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        assert wait_for(lambda: registry.log().count("worker 1 serving") == 2, timeout=30)
        after = base_200()
        assert after >= before  # the dead worker's count is still there (and the supervisor's probe added none)
        for _ in range(10):
            assert http_request("GET", f"{registry.url}/v2/").status == 200
        assert wait_for(lambda: base_200() == after + 10, timeout=10), (base_200(), after)
        samples = scrape(registry.metrics_port)
        assert total(samples, "ociregistry_build_info") == 1  # not one per process
        directory = [d for d in os.listdir(tmp_path / "registry") if d]  # the data dir holds no metric files
        assert not any(name.endswith(".db") for name in directory)
    finally:
        registry.stop()


# ------------------------------------------------------------- notifications


def test_notification_deliveries_are_counted_per_endpoint(tmp_path):
    from notification_helpers import config_file, endpoint
    from receiver_process import ReceiverProcess

    receiver = ReceiverProcess(str(tmp_path / "receiver")).start()
    port = free_port()
    config = config_file(tmp_path, [endpoint(receiver, "hooks")])
    with open(config, "a") as f:
        f.write(f"metrics: 'tcp:{port}:interface=127.0.0.1'\n")
    registry = RegistryProcess(str(tmp_path / "data"), config=config).start()
    try:
        for tag in ("v1", "v2"):
            assert push_image(registry.url, "team/app", tag, {}, seed=tag).status == 201
        events = len(receiver.wait_for(6, timeout=60))  # two blobs and a manifest, twice

        def synced():
            samples = scrape(port)
            delivered = total(samples, "ociregistry_notifications_delivered_total", endpoint="hooks")
            return samples if delivered >= events else None

        samples = wait_for(synced, timeout=30)
        assert samples, scrape(port)
        assert total(samples, "ociregistry_notifications_delivered_total", endpoint="hooks") == events
        assert total(samples, "ociregistry_notifications_delivery_seconds_count", endpoint="hooks") == events
        assert total(samples, "ociregistry_notifications_delivery_seconds_sum", endpoint="hooks") > 0
        inf = total(samples, "ociregistry_notifications_delivery_seconds_bucket", endpoint="hooks", le="+Inf")
        assert inf == events
        assert total(samples, "ociregistry_notifications_pending", endpoint="hooks") == 0
        assert total(samples, "ociregistry_notifications_dropped_total", endpoint="hooks") == 0
    finally:
        registry.stop()
        receiver.stop()
