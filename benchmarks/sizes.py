"""The sizes and counts of every workload, for the full run and for ``--quick``."""

from __future__ import annotations

from .common import MB, MiB


class Sizes:
    """What the full run and the quick check use."""

    def __init__(self, quick: bool, scale_sizes: tuple[int, ...] | None = None, duration: float | None = None):
        self.quick = quick
        self.big_blob = 16 * MiB if quick else 256 * MiB
        self.chunk = 4 * MiB if quick else 8 * MiB
        self.huge_repeats = 4  # the "1 GiB" blob is the big blob four times over
        self.push_reps = 1 if quick else 5
        self.pull_reps = 1 if quick else 5
        self.wrk_seconds = 1 if quick else 5
        self.concurrencies = (1, 16, 64)
        self.small_blobs = 100 if quick else 1000
        self.small_blob_size = 4096
        self.small_clients = 8
        self.layer_size = 2 * MiB if quick else 20 * MiB
        self.layers = 3
        self.skopeo_reps = 1 if quick else 3
        self.sample_rate = 50.0  # manifest GETs per second during the huge push
        self.idle_sample_seconds = 1.0 if quick else 2.0
        self.listing_repositories = 150 if quick else 1000  # --suite listing
        self.listing_tags = 200 if quick else 2000
        self.listing_reps = 10 if quick else 50
        # --suite scale: the repository counts reached in turn (--sizes), the tags of one repository
        self.scale_sizes = scale_sizes or ((100, 1000) if quick else (1000, 10_000, 100_000))
        self.scale_s3_max = 10_000  # on S3, the sizes up to this one
        self.scale_tags = 300 if quick else 10_000
        self.scale_reps = 5 if quick else 30
        # --suite mixed: seconds of each workload at each concurrency (--duration), the blob sizes
        self.mixed_seconds = duration or (1.0 if quick else 10.0)
        self.mixed_concurrencies = (1, 10, 100)
        self.mixed_blob_sizes = (MB,) if quick else (MB, 10 * MB, 100 * MB)
        self.mixed_in_flight_max = 2 * 1000 * MB  # bytes pushed at once at most: larger runs are n/a
        # --suite coldpull: clients pulling one image through the cache at once, its layers
        self.coldpull_clients = 8
        self.coldpull_layers = 3
        self.coldpull_layer_size = 4 * MiB if quick else 32 * MiB

    @property
    def huge_blob(self) -> int:
        return self.big_blob * self.huge_repeats

    def to_dict(self) -> dict:
        return dict(vars(self)) | {"huge_blob": self.huge_blob}
