"""
The report: per-round figures combined into a run's (medians), the ratios
against the reference on the same storage, and the text, Markdown and JSON
output.  The JSON's shape: ``{"meta": {...}, "metrics": [[key, label, unit,
better], ...], "runs": {label: {"results", "notes", "cpu", "rounds",
"ratios", ...}}}``.
"""

from __future__ import annotations

import json
import re
import statistics

from .columns import baseline_of, is_reference
from .common import MiB
from .sizes import Sizes

# The notes that say a figure is missing or partial: printed after the table.
FAILURE = re.compile(r"Error|failed|not supported|exited|time budget")


def human_size(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30} GiB"
    return f"{n / MiB:g} MiB"


def metric_labels(metrics, sizes: Sizes) -> list[tuple[str, str, str, str]]:
    """The metrics with the sizes of this run in their labels."""
    image = f"{sizes.layers} x {human_size(sizes.layer_size)} layers"
    fill = {
        "big": human_size(sizes.big_blob),
        "chunk": human_size(sizes.chunk),
        "huge": human_size(sizes.huge_blob),
        "n": sizes.small_blobs,
        "image": image,
        "listing_repositories": f"{sizes.listing_repositories:,}",
        "listing_tags": f"{sizes.listing_tags:,}",
        "coldpull": f"{sizes.coldpull_clients} clients",
        "coldpull_blobs": sizes.coldpull_layers + 1,
    }
    return [(k, label.format(**fill), unit, better) for k, label, unit, better in metrics]


def ratio(ours, reference):
    if ours is None or reference in (None, 0):
        return None
    return round(ours / reference, 2)


def combine_rounds(run: dict) -> None:
    """A run's figures: the median of each over its rounds (one round: that round's)."""
    rounds = run.get("rounds", [])
    if not rounds:
        return
    keys = {k for r in rounds for k in r["results"]}
    for key in keys:
        values = [r["results"][key] for r in rounds if r["results"].get(key) is not None]
        run["results"][key] = round(statistics.median(values), 2) if values else None
    run["notes"] = dict(rounds[-1]["notes"])
    for i, r in enumerate(rounds[:-1]):  # failures of earlier rounds
        for key, note in r["notes"].items():
            if note != run["notes"].get(key) and FAILURE.search(note):
                run["notes"][f"{key} (round {i + 1})"] = note
    if len(rounds) > 1:
        for key in sorted(keys):
            run["notes"][f"{key} by round"] = ", ".join(
                "n/a" if r["results"].get(key) is None else f"{r['results'][key]:g}" for r in rounds
            )
    run["cpu"] = combine_cpu(rounds)


def combine_cpu(rounds: list[dict]) -> dict:
    """Each step's CPU and wall figures: the median over the rounds that have them."""
    steps = list(dict.fromkeys(step for r in rounds for step in r["cpu"]))
    cpu = {}
    for step in steps:
        fields = dict.fromkeys(field for r in rounds for field in r["cpu"].get(step, {}))
        cpu[step] = {
            field: round(
                statistics.median([r["cpu"][step][field] for r in rounds if field in r["cpu"].get(step, {})]), 3
            )
            for field in fields
        }
    return cpu


def add_ratios(report: dict, s3: bool) -> None:
    """Every ociregistry run's ratios against the reference on the same storage."""
    for label, run in report["runs"].items():
        if not is_reference(label):
            reference = report["runs"].get(baseline_of(label), {}).get("results", {})
            run["ratios"] = {key: ratio(run["results"].get(key), reference.get(key)) for key, *_ in report["metrics"]}
            if s3:
                run["ratios_against"] = baseline_of(label)


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def layout(runs: dict) -> tuple[list[str], list[str]]:
    """
    The value columns (the filesystem's ociregistry runs, then its
    reference, then the same on S3) and the runs that get a ratio column:
    those whose reference on the same storage was run.
    """
    columns = []
    for on_s3 in (False, True):
        group = [label for label in runs if label.endswith(" s3") == on_s3]
        columns += [label for label in group if not is_reference(label)] + [
            label for label in group if is_reference(label)
        ]
    with_ratios = [label for label in columns if not is_reference(label) and baseline_of(label) in runs]
    return columns, with_ratios


def ratio_heading(label: str, separator: str = "/") -> str:
    """ "w1/ref" for "ociregistry w1", "w1 s3/ref s3" for "ociregistry w1 s3", "w1 notify/w1"."""
    reference = baseline_of(label).replace("reference", "ref").replace("ociregistry ", "")
    return f"{label.replace('ociregistry ', '')}{separator}{reference}"


def aligned(header: list[str], rows: list[list[str]], rule: bool) -> str:
    """A text table: the first column left-aligned, the others right-aligned, optionally a rule under the header."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(cells))

    lines = [line(header)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + [line(row) for row in rows])


def table(report: dict) -> str:
    runs = report["runs"]
    columns, with_ratios = layout(runs)
    rows = []
    for key, label, unit, better in report["metrics"]:
        arrow = "↑" if better == "higher" else "↓"
        row = [f"{label} [{unit} {arrow}]"]
        row += [format_value(runs[c]["results"].get(key)) for c in columns]
        row += [format_value(runs[o]["ratios"].get(key)) for o in with_ratios]
        rows.append(row)
    header = ["metric"] + columns + [ratio_heading(o) for o in with_ratios]
    return aligned(header, rows, rule=True)


def markdown_table(report: dict) -> str:
    runs = report["runs"]
    columns, with_ratios = layout(runs)
    ratio_columns = [ratio_heading(o, " / ") for o in with_ratios]
    lines = [
        "| metric | unit | " + " | ".join(columns + ratio_columns) + " |",
        "|---|---|" + "---:|" * (len(columns) + len(ratio_columns)),
    ]
    for key, label, unit, better in report["metrics"]:
        values = [format_value(runs[c]["results"].get(key)) for c in columns]
        values += [format_value(runs[o]["ratios"].get(key)) for o in with_ratios]
        arrow = "higher is better" if better == "higher" else "lower is better"
        lines.append(f"| {label} | {unit} ({arrow}) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def cpu_table(report: dict) -> str:
    """
    Registry CPU seconds (all its processes) per workload, and the
    workload's wall time; on S3 also SeaweedFS's CPU seconds.
    """
    columns, _ = layout(report["runs"])
    runs = {label: report["runs"][label] for label in columns if report["runs"][label].get("cpu")}
    if not runs:
        return ""
    steps = list(dict.fromkeys(step for run in runs.values() for step in run["cpu"]))
    on_s3 = any("s3_cpu_s" in cpu for run in runs.values() for cpu in run["cpu"].values())

    def cell(cpu: dict | None) -> str:
        if cpu is None:
            return "n/a"
        s3 = f" + {cpu['s3_cpu_s']:.1f}" if "s3_cpu_s" in cpu else ""
        return f"{cpu['server_cpu_s']:.1f}{s3} / {cpu['wall_s']:.1f}"

    what = "registry CPU s (+ SeaweedFS CPU s) / wall s" if on_s3 else "registry CPU s / wall s"
    header = [f"workload: {what}"] + list(runs)
    rows = [[step] + [cell(run["cpu"].get(step)) for run in runs.values()] for step in steps]
    return aligned(header, rows, rule=False)


def failures(report: dict) -> list[str]:
    """The lines after the table: runs that were unavailable, figures that failed or are partial."""
    lines = []
    for label, run in report["runs"].items():
        if "unavailable" in run:
            lines.append(f"\n{label}: unavailable: {run['unavailable']}")
        for key, note in run.get("notes", {}).items():
            if FAILURE.search(note):
                lines.append(f"{label}: {key}: {note}")
    return lines


def footer(report: dict, s3: bool) -> str:
    """What the ratios are against, the code and the interpreter measured, and how long it took."""
    meta = report["meta"]
    against = "reference"
    if s3 and "s3_unavailable" in meta:
        against = "reference (the s3 columns: unavailable, see above)"
    elif s3:
        against = (
            f"the reference on the same storage (the s3 columns against reference s3, both storing in "
            f"one SeaweedFS on this machine: {meta['seaweedfs']})"
        )
    return (
        f"\nratios are ociregistry / {against}; ociregistry {meta['ociregistry']}, {meta['python']}, "
        f"{meta['cores']} cores; total time {meta.get('duration_s')}s"
    )


def print_report(report: dict, s3: bool, markdown: bool, json_path: str | None) -> None:
    print(table(report))
    for line in failures(report):
        print(line)
    print()
    print(cpu_table(report))
    print(footer(report, s3))
    if markdown:
        print()
        print(markdown_table(report))
    text = json.dumps(report, indent=2)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
        print(f"JSON written to {json_path}")
    else:
        print(text)
