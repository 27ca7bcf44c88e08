"""Ratios of dicomstore to each peer, from a ``../shared/bench`` results file.

    python benchmarks/scp_ratios.py ~/.cache/dicombench/results/peers-<date>.jsonl

For every scenario and set: the median instances/s, MB/s and peak RSS of each
receiver over its runs, then dicomstore's (and dicomstore --fsync off's)
instances/s divided by each peer's — the figures issue 3's targets are stated
in. ``benchmarks/bench_scp.sh`` prints this after its runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

OURS = ("dicomstore", "dicomstore-nofsync")


def medians(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(scenario, set, receiver) -> median inst/s, MB/s and peak RSS (MB) over the runs."""
    runs: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("wall_s"):
            runs[(row["scenario"], row["set"], row["receiver"])].append(row)
    out = {}
    for key, group in runs.items():
        out[key] = {
            "inst_s": statistics.median(r["stored"] / r["wall_s"] for r in group),
            "mb_s": statistics.median(r["bytes"] / r["wall_s"] / 1e6 for r in group),
            "peak_mb": statistics.median(r.get("rcv_peak_mb") or 0.0 for r in group),
        }
    return out


def ratios(rows: list[dict]) -> list[tuple[str, str, str, str, float]]:
    """(scenario, set, ours, peer, ours/peer in instances/s) for every pair measured."""
    med = medians(rows)
    out = []
    for (scenario, set_name, receiver), mine in sorted(med.items()):
        if receiver not in OURS:
            continue
        for (s2, set2, peer), theirs in sorted(med.items()):
            if (s2, set2) == (scenario, set_name) and peer not in OURS and theirs["inst_s"]:
                out.append((scenario, set_name, receiver, peer, mine["inst_s"] / theirs["inst_s"]))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print("scen  set   receiver            inst/s     MB/s  peak MB")
    for (scenario, set_name, receiver), m in sorted(medians(rows).items()):
        print(
            f"{scenario:<5} {set_name:<5} {receiver:<19} {m['inst_s']:7.0f} {m['mb_s']:8.1f}"
            f" {m['peak_mb']:8.0f}"
        )
    print("\nscen  set   ours                / peer               instances/s ratio")
    for scenario, set_name, ours, peer, ratio in ratios(rows):
        print(f"{scenario:<5} {set_name:<5} {ours:<19} / {peer:<20} {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
