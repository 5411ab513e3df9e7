"""
ociregistry's benchmark against the reference registry (``benchmarks/bench.py``,
or ``python -m benchmarks``; docs/benchmarks.md).  Standard library only.

- ``cli``: the options and ``main``; ``session``: one run (the test data,
  SeaweedFS, each registry in turn for each round, the cleanup).
- ``workloads/``: the workload families, one module each (see its
  ``__init__`` for what a family declares and where a new one goes), and
  ``workloads/base.py``, what their steps share (``Bench``).
- ``registries``: the registries under test (ociregistry with N workers,
  the reference, on the filesystem or S3); ``s3``: SeaweedFS for ``--s3``.
- ``client``: the HTTP/1.1 client of the workloads; ``load``: wrk and the
  epoll closed loop; ``data``: the test data; ``sizes``: every size and count.
- ``report``: medians over rounds, ratios, the tables and the JSON.
"""
