"""
HTTP Basic auth against a real registry process: every right and every
refusal (pull, push, delete × anonymous, wrong password, allowed,
forbidden), the catalog filtered per caller, cross-repository mounts,
reloading users and rules without a restart (on change and on SIGHUP), and
failed-login rate limiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from auth_helpers import (
    HTPASSWD,
    PASSWORDS,
    RULES,
    basic,
    call,
    get_manifest,
    image,
    push_image,
    sha256_digest,
    start_registry,
    wait_until,
    write_htpasswd,
)
from registry_process import RegistryProcess

pytestmark = pytest.mark.ociregistry_only

ANONYMOUS: dict = {}
WRONG = basic("alice", "not-her-password")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("basic-auth")
    write_htpasswd(root / "htpasswd", PASSWORDS)
    process = start_registry(root, "  htpasswd: htpasswd\n" + RULES)
    # Content every test can rely on, pushed by the admin.
    for name in ("team-a/app", "public/base", "shared/tools", "private/secret", "shared/deep/x"):
        assert push_image(process.url, name, "v1", basic("olivia")).status == 201, name
    yield process
    process.stop()


def assert_challenge(reply, realm="test-registry"):
    assert reply.status == 401, (reply.status, reply.body)
    assert reply.error_codes == ["UNAUTHORIZED"]
    assert reply.headers["www-authenticate"] == f'Basic realm="{realm}"'


def assert_denied(reply):
    assert reply.status == 403, (reply.status, reply.body)
    assert reply.error_codes == ["DENIED"]
    assert "www-authenticate" not in reply.headers


# ------------------------------------------------------------------ base


def test_base_needs_a_login(registry):
    assert_challenge(call(registry.url, "GET", "/v2/"))
    assert_challenge(call(registry.url, "GET", "/v2/", headers=WRONG))
    assert call(registry.url, "GET", "/v2/", headers=basic("carol")).status == 200
    # What containers/image clients send when they have no credentials is anonymous.
    assert_challenge(call(registry.url, "GET", "/v2/", headers={"Authorization": "Basic Og=="}))
    assert_challenge(call(registry.url, "GET", "/v2/", headers={"Authorization": "Basic !!notbase64"}))


def test_unknown_user_is_refused_like_a_wrong_password(registry):
    assert_challenge(call(registry.url, "GET", "/v2/", headers=basic("mallory", "guess")))


# ------------------------------------------------------------------ pull


def test_pull_allowed(registry):
    reply = get_manifest(registry.url, "team-a/app", "v1", basic("bob"))
    assert reply.status == 200
    assert reply.body == image("team-a/app:v1")[2]
    config = image("team-a/app:v1")[0]
    blob = call(registry.url, "GET", f"/v2/team-a/app/blobs/{sha256_digest(config)}", headers=basic("bob"))
    assert blob.status == 200 and blob.body == config
    tags = call(registry.url, "GET", "/v2/team-a/app/tags/list", headers=basic("alice"))
    assert tags.status == 200 and tags.json()["tags"] == ["v1"]


def test_pull_anonymous_where_allowed(registry):
    assert get_manifest(registry.url, "public/base", "v1", ANONYMOUS).status == 200
    assert call(registry.url, "HEAD", "/v2/public/base/manifests/v1").status == 200
    # Logged-in users get what anonymous gets.
    assert get_manifest(registry.url, "public/base", "v1", basic("carol")).status == 200


def test_pull_anonymous_refused(registry):
    assert_challenge(get_manifest(registry.url, "team-a/app", "v1", ANONYMOUS))
    assert_challenge(call(registry.url, "GET", "/v2/team-a/app/tags/list"))
    config = image("team-a/app:v1")[0]
    assert_challenge(call(registry.url, "GET", f"/v2/team-a/app/blobs/{sha256_digest(config)}"))


def test_pull_wrong_password(registry):
    assert_challenge(get_manifest(registry.url, "team-a/app", "v1", WRONG))
    # A wrong password is refused even where anonymous pulls are allowed.
    assert_challenge(get_manifest(registry.url, "public/base", "v1", WRONG))


def test_pull_forbidden(registry):
    assert_denied(get_manifest(registry.url, "team-a/app", "v1", basic("carol")))
    assert_denied(get_manifest(registry.url, "private/secret", "v1", basic("alice")))
    # The refusal does not depend on whether the repository exists.
    assert_denied(get_manifest(registry.url, "private/nothing-here", "v1", basic("alice")))


def test_single_star_stays_within_one_component(registry):
    assert get_manifest(registry.url, "shared/tools", "v1", basic("carol")).status == 200
    assert_denied(get_manifest(registry.url, "shared/deep/x", "v1", basic("carol")))
    assert_challenge(get_manifest(registry.url, "shared/tools", "v1", ANONYMOUS))


# ------------------------------------------------------------------ push


def test_push_allowed(registry):
    assert push_image(registry.url, "team-a/new", "v1", basic("bob")).status == 201
    assert push_image(registry.url, "public/alices", "v1", basic("alice")).status == 201
    assert get_manifest(registry.url, "team-a/new", "v1", basic("alice")).status == 200


def test_push_anonymous_refused(registry):
    assert_challenge(push_image(registry.url, "team-a/anon", "v1", ANONYMOUS))
    assert_challenge(push_image(registry.url, "public/anon", "v1", ANONYMOUS))
    # Even with a whole body sent along, the connection stays usable and nothing is stored.
    data = b"x" * 300_000
    reply = call(
        registry.url,
        "POST",
        f"/v2/public/anon/blobs/uploads/?digest={sha256_digest(data)}",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    assert_challenge(reply)
    assert call(registry.url, "HEAD", f"/v2/public/anon/blobs/{sha256_digest(data)}").status in (401, 404)


def test_push_wrong_password(registry):
    assert_challenge(push_image(registry.url, "team-a/wrong", "v1", WRONG))


def test_push_forbidden(registry):
    assert_denied(push_image(registry.url, "team-a/carols", "v1", basic("carol")))
    assert_denied(push_image(registry.url, "public/bobs", "v1", basic("bob")))  # bob may pull public, not push
    _, _, manifest = image("x")
    reply = call(
        registry.url,
        "PUT",
        "/v2/shared/tools/manifests/v2",
        manifest,
        {**basic("carol"), "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert_denied(reply)


def test_upload_session_calls_need_push(registry):
    started = call(registry.url, "POST", "/v2/team-a/app/blobs/uploads/", b"", basic("bob"))
    assert started.status == 202
    location = started.headers["location"]
    assert call(registry.url, "GET", location, headers=basic("bob")).status == 204
    assert_denied(call(registry.url, "GET", location, headers=basic("carol")))
    assert_challenge(call(registry.url, "PATCH", location, b"abc", {"Content-Type": "application/octet-stream"}))
    assert_denied(call(registry.url, "DELETE", location, headers=basic("carol")))
    assert call(registry.url, "DELETE", location, headers=basic("bob")).status == 204


def test_mount_needs_pull_on_the_source(registry):
    config = image("team-a/app:v1")[0]
    digest = sha256_digest(config)
    # alice may pull team-a/app: mounted.
    reply = call(
        registry.url, "POST", f"/v2/public/mounted/blobs/uploads/?mount={digest}&from=team-a/app", b"", basic("alice")
    )
    assert reply.status == 201
    # alice may not pull private/secret: no mount, an ordinary upload starts instead.
    secret_config = image("private/secret:v1")[0]
    reply = call(
        registry.url,
        "POST",
        f"/v2/public/mounted/blobs/uploads/?mount={sha256_digest(secret_config)}&from=private/secret",
        b"",
        basic("alice"),
    )
    assert reply.status == 202
    assert call(registry.url, "HEAD", f"/v2/public/mounted/blobs/{sha256_digest(secret_config)}").status == 404


# ---------------------------------------------------------------- delete


def test_delete_allowed(registry):
    assert push_image(registry.url, "team-a/doomed", "v1", basic("bob")).status == 201
    manifest = image("team-a/doomed:v1")[2]
    reply = call(
        registry.url, "DELETE", f"/v2/team-a/doomed/manifests/{sha256_digest(manifest)}", headers=basic("alice")
    )
    assert reply.status == 202
    layer = image("team-a/doomed:v1")[1]
    assert (
        call(registry.url, "DELETE", f"/v2/team-a/doomed/blobs/{sha256_digest(layer)}", headers=basic("alice")).status
        == 202
    )


def test_delete_by_admin_everywhere(registry):
    assert push_image(registry.url, "public/admin-deletes", "v1", basic("alice")).status == 201
    manifest = image("public/admin-deletes:v1")[2]
    reply = call(
        registry.url, "DELETE", f"/v2/public/admin-deletes/manifests/{sha256_digest(manifest)}", headers=basic("olivia")
    )
    assert reply.status == 202


def test_delete_anonymous_refused(registry):
    manifest = image("public/base:v1")[2]
    assert_challenge(call(registry.url, "DELETE", f"/v2/public/base/manifests/{sha256_digest(manifest)}"))


def test_delete_wrong_password(registry):
    manifest = image("team-a/app:v1")[2]
    assert_challenge(call(registry.url, "DELETE", f"/v2/team-a/app/manifests/{sha256_digest(manifest)}", headers=WRONG))


def test_delete_forbidden(registry):
    manifest = image("team-a/app:v1")[2]
    # bob may pull and push in team-a, but not delete.
    assert_denied(
        call(registry.url, "DELETE", f"/v2/team-a/app/manifests/{sha256_digest(manifest)}", headers=basic("bob"))
    )
    layer = image("team-a/app:v1")[1]
    assert_denied(call(registry.url, "DELETE", f"/v2/team-a/app/blobs/{sha256_digest(layer)}", headers=basic("carol")))
    assert get_manifest(registry.url, "team-a/app", "v1", basic("bob")).status == 200


# --------------------------------------------------------------- catalog


def catalog(registry, headers):
    reply = call(registry.url, "GET", "/v2/_catalog", headers=headers)
    assert reply.status == 200, (reply.status, reply.body)
    return reply.json()["repositories"]


def test_catalog_lists_what_the_caller_may_pull(registry):
    everything = catalog(registry, basic("olivia"))
    assert {"team-a/app", "public/base", "shared/tools", "private/secret", "shared/deep/x"} <= set(everything)
    assert all(n.startswith("public/") for n in catalog(registry, ANONYMOUS))
    assert "public/base" in catalog(registry, ANONYMOUS)
    carols = catalog(registry, basic("carol"))
    assert "shared/tools" in carols and "public/base" in carols
    assert not {"team-a/app", "private/secret", "shared/deep/x"} & set(carols)
    bobs = catalog(registry, basic("bob"))
    assert "team-a/app" in bobs and "private/secret" not in bobs
    assert_challenge(call(registry.url, "GET", "/v2/_catalog", headers=WRONG))


def test_catalog_pages_over_the_visible_names(registry):
    reply = call(registry.url, "GET", "/v2/_catalog?n=1", headers=basic("carol"))
    assert reply.status == 200
    first = reply.json()["repositories"]
    assert len(first) == 1 and first[0] in catalog(registry, basic("carol"))


def test_no_password_in_the_log(registry):
    log = registry.log()
    assert "failed login as alice" in log
    for password in [*PASSWORDS.values(), "not-her-password"]:
        assert password not in log


# ---------------------------------------------------------------- reload


def test_users_and_rules_reload_when_the_files_change(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "one"})
    # No failed-login limit: the polling below fails logins until the change is seen.
    auth = "  htpasswd: htpasswd\n  max_failed_logins: 0\n  access:\n    - {repository: 'a/**', pull: [alice]}\n"
    process = start_registry(tmp_path, auth)
    try:
        assert process.port
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "one")).status == 200
        assert call(process.url, "GET", "/v2/", headers=basic("dave", "two")).status == 401

        write_htpasswd(tmp_path / "htpasswd", {"alice": "one", "dave": "two"})
        assert wait_until(lambda: call(process.url, "GET", "/v2/", headers=basic("dave", "two")).status == 200)
        assert call(process.url, "GET", "/v2/b/x/tags/list", headers=basic("dave", "two")).status == 403

        config = tmp_path / "config.yaml"
        config.write_text(config.read_text() + "    - {repository: 'b/**', pull: [dave]}\n")
        assert wait_until(
            lambda: call(process.url, "GET", "/v2/b/x/tags/list", headers=basic("dave", "two")).status == 404
        )

        # A broken file is logged and the settings in force stay.
        config.write_text(config.read_text() + "  nonsense: [\n")
        time.sleep(1.3)
        assert call(process.url, "GET", "/v2/b/x/tags/list", headers=basic("dave", "two")).status == 404
        assert wait_until(lambda: "not applied" in process.log())

        # A password changed and the old one stops working.
        write_htpasswd(tmp_path / "htpasswd", {"alice": "three", "dave": "two"})
        assert wait_until(lambda: call(process.url, "GET", "/v2/", headers=basic("alice", "one")).status == 401)
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "three")).status == 200
    finally:
        process.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_even_when_the_file_looks_unchanged(tmp_path, workers):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "first-password"})
    process = start_registry(
        tmp_path,
        "  htpasswd: htpasswd\n  max_failed_logins: 0\n  admins: [alice]\n",
        extra_args=["--workers", str(workers)] if workers > 1 else (),
    )
    try:
        if workers > 1:
            assert wait_until(lambda: "worker 1 serving" in process.log())
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "first-password")).status == 200
        path = tmp_path / "htpasswd"
        before = os.stat(path)
        # Same inode, same size, same mtime: only a signal tells the registry.
        replacement = tmp_path / "other"
        write_htpasswd(replacement, {"alice": "other-password"})
        new_line = replacement.read_bytes()
        assert len(new_line) == before.st_size
        with open(path, "r+b") as f:
            f.write(new_line)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(1.2)
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "first-password")).status == 200

        process.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: process.log().count("reloading auth settings") == workers)
        # Every worker reloaded: each request (a new connection, any worker) sees the new password.
        for _ in range(12):
            assert call(process.url, "GET", "/v2/", headers=basic("alice", "other-password")).status == 200
            assert call(process.url, "GET", "/v2/", headers=basic("alice", "first-password")).status == 401
    finally:
        process.stop()


# ---------------------------------------------------------- rate limiting


def test_failed_logins_are_rate_limited_per_address(tmp_path):
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    auth = (
        "  htpasswd: htpasswd\n  max_failed_logins: 3\n  failed_login_window: 2s\n"
        "  access:\n    - {repository: 'public/**', pull: [anonymous], push: [alice]}\n"
    )
    process = start_registry(tmp_path, auth)
    try:
        for _ in range(3):
            assert call(process.url, "GET", "/v2/", headers=basic("alice", "wrong")).status == 401
        limited = call(process.url, "GET", "/v2/", headers=basic("alice", "right"))
        assert limited.status == 429
        assert limited.error_codes == ["TOOMANYREQUESTS"]
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "wrong")).status == 429
        # Requests without credentials are not held back.
        assert call(process.url, "GET", "/v2/public/x/tags/list").status == 404
        time.sleep(2.1)
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "right")).status == 200
        assert "too many failed logins" in process.log()
    finally:
        process.stop()


def test_guesses_sent_at_once_count_while_they_are_checked(tmp_path):
    """
    150 guesses at once with a limit of 10: at most 10 are checked, the rest
    (and then the right password) get 429.
    """
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"}, cost=10)
    process = start_registry(tmp_path, "  htpasswd: htpasswd\n  max_failed_logins: 10\n  failed_login_window: 60s\n")
    try:
        guesses = 150
        ready = threading.Barrier(guesses, timeout=30)

        def guess(number):
            ready.wait()
            if number == guesses - 1:  # the right password, sent last, while the others are being checked
                time.sleep(0.3)
                return call(process.url, "GET", "/v2/", headers=basic("alice", "right"))
            return call(process.url, "GET", "/v2/", headers=basic("alice", f"guess-{number}"))

        with ThreadPoolExecutor(guesses) as pool:
            replies = list(pool.map(guess, range(guesses), timeout=60))
        statuses = [reply.status for reply in replies[:-1]]
        assert set(statuses) <= {401, 429}, statuses
        assert 1 <= statuses.count(401) <= 10, statuses.count(401)
        assert replies[-1].status == 429 and int(replies[-1].headers["retry-after"]) >= 1
        assert all(r.error_codes == ["TOOMANYREQUESTS"] for r in replies if r.status == 429)
    finally:
        process.stop()


def test_a_flood_of_logins_is_refused_at_once_past_what_the_login_pool_takes(tmp_path):
    """
    Wrong passwords from 16 addresses (each within its failed-login limit),
    160 at once: the login pool takes what it can check soon and refuses the
    rest at once; anonymous requests and cached logins answer meanwhile.
    """
    # Cost 10 (about 60 ms a check here) is slow enough that 160 at once fill
    # the pool's 66 places, and quick enough that the 66 taken are done well
    # within the bound below on a loaded machine (cost 11 took 29.6 s at a
    # load average of 12).
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"}, cost=10)
    process = start_registry(tmp_path, "  htpasswd: htpasswd\n  max_failed_logins: 10\n")
    try:
        assert call(process.url, "GET", "/v2/", headers=basic("alice", "right")).status == 200  # now cached
        guesses = 160
        ready = threading.Barrier(guesses + 1, timeout=30)

        def guess(number):
            ready.wait()
            started = time.monotonic()
            reply = call(
                process.url,
                "GET",
                "/v2/",
                headers=basic("alice", f"guess-{number}"),
                source=f"127.0.0.{10 + number % 16}",
            )
            return reply, time.monotonic() - started

        def timed(headers):
            started = time.monotonic()
            status = call(process.url, "GET", "/v2/", headers=headers).status
            return status, time.monotonic() - started

        with ThreadPoolExecutor(guesses) as pool:
            flood = [pool.submit(guess, number) for number in range(guesses)]
            ready.wait()
            time.sleep(0.5)
            anonymous, cached = timed({}), timed(basic("alice", "right"))
            replies = [future.result(timeout=60) for future in flood]
        assert anonymous[0] == 401 and anonymous[1] < 1.0, anonymous
        assert cached[0] == 200 and cached[1] < 1.0, cached
        statuses = [reply.status for reply, _ in replies]
        assert set(statuses) <= {401, 503}, statuses
        refused = [(reply, seconds) for reply, seconds in replies if reply.status == 503]
        assert refused and statuses.count(401) >= 10, statuses
        for reply, seconds in refused:
            assert reply.error_codes == ["UNAVAILABLE"] and reply.headers["retry-after"] == "1"
            assert seconds < 2.0, seconds
        assert max(seconds for _, seconds in replies) < 25.0
        assert "refusing new logins" in process.log()
    finally:
        process.stop()


def test_a_glob_with_many_stars_does_not_stall_the_registry(tmp_path):
    """An anonymous client picks the name a rule's glob is matched against: it must not take seconds."""
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"})
    process = start_registry(
        tmp_path, "  htpasswd: htpasswd\n  access:\n    - {repository: '*-*-*-*-*x', pull: [anonymous]}\n"
    )
    try:
        name = ("a-" * 128)[:255]
        started = time.monotonic()
        assert call(process.url, "GET", f"/v2/{name}/tags/list").status == 401
        assert time.monotonic() - started < 0.5
        assert call(process.url, "GET", "/v2/a-b-c-d-ex/tags/list").status == 404  # the rule still applies
    finally:
        process.stop()


def test_long_passwords_cost_no_memory(tmp_path):
    """SHA-crypt hashes the password once per byte of it: an 11 KiB guess must not take hundreds of MiB."""
    if HTPASSWD is None:
        pytest.skip("htpasswd (apache2-utils) is not installed")
    line = subprocess.run([HTPASSWD, "-nb5", "carl", "pw"], check=True, capture_output=True, text=True).stdout
    (tmp_path / "htpasswd").write_text(line.strip() + "\n")
    process = start_registry(tmp_path, "  htpasswd: htpasswd\n  max_failed_logins: 0\n")

    def peak_mib():
        with open(f"/proc/{process.process.pid}/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) // 1024

    try:
        assert call(process.url, "GET", "/v2/", headers=basic("carl", "pw")).status == 200
        before = peak_mib()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(
                pool.map(
                    lambda _: call(process.url, "GET", "/v2/", headers=basic("carl", "x" * 11500)).status, range(4)
                )
            )
        assert statuses == [401] * 4
        assert peak_mib() - before < 50, (before, peak_mib())
    finally:
        process.stop()


def test_without_auth_the_log_says_the_registry_is_open(tmp_path):
    process = RegistryProcess(str(tmp_path / "data")).start()
    try:
        assert call(process.url, "PUT", "/v2/anyone/blobs/uploads/x").status != 401
        assert "open to anyone" in process.log()
    finally:
        process.stop()


# ------------------------------------------------------------------ timing


def test_an_unknown_user_takes_as_long_as_a_wrong_password(tmp_path):
    """No user enumeration by timing: the check for an unknown name costs what the users' own hashes cost."""
    write_htpasswd(tmp_path / "htpasswd", {"alice": "right"}, cost=12)
    process = start_registry(tmp_path, "  htpasswd: htpasswd\n  max_failed_logins: 0\n")
    try:

        def seconds(user):
            started = time.monotonic()
            assert call(process.url, "GET", "/v2/", headers=basic(user, "wrong")).status == 401
            return time.monotonic() - started

        known = sorted(seconds("alice") for _ in range(3))[1]
        unknown = sorted(seconds("mallory") for _ in range(3))[1]
        assert unknown >= 0.5 * known, (known, unknown)
    finally:
        process.stop()
