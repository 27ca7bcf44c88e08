"""benchmarks/scp_ratios.py: medians per receiver and dicomstore / peer ratios."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "scp_ratios.py"
_spec = importlib.util.spec_from_file_location("scp_ratios", _PATH)
assert _spec is not None and _spec.loader is not None
scp_ratios = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scp_ratios)


def run(receiver: str, wall: float, scenario: str = "A", set_name: str = "ct") -> dict:
    return {
        "scenario": scenario,
        "set": set_name,
        "receiver": receiver,
        "wall_s": wall,
        "stored": 1000,
        "bytes": 500_000_000,
        "rcv_peak_mb": 60.0,
    }


ROWS = [
    run("dcmtk", 1.0),
    run("dcmtk", 2.0),
    run("dcmtk", 4.0),  # median 2.0 s: 500/s
    run("dicomstore", 4.0),  # 250/s
    run("orthanc-sync", 8.0),  # 125/s
    run("dicomstore", 10.0, set_name="tiny"),  # no peer measured on tiny
]


def test_medians_over_runs() -> None:
    med = scp_ratios.medians(ROWS)
    assert med[("A", "ct", "dcmtk")]["inst_s"] == pytest.approx(500)
    assert med[("A", "ct", "dcmtk")]["mb_s"] == pytest.approx(250)
    assert med[("A", "ct", "dicomstore")]["peak_mb"] == 60


def test_ratios_to_each_peer_of_the_same_scenario_and_set() -> None:
    assert scp_ratios.ratios(ROWS) == [
        ("A", "ct", "dicomstore", "dcmtk", pytest.approx(0.5)),
        ("A", "ct", "dicomstore", "orthanc-sync", pytest.approx(2.0)),
    ]


def test_main_prints_both_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "peers.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert scp_ratios.main([str(results)]) == 0
    out = capsys.readouterr().out
    assert "dicomstore          / orthanc-sync" in out and "2.00x" in out
    assert scp_ratios.main([]) == 2
