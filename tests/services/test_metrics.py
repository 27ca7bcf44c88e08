"""services/metrics.py: the expositions of the processes of ``serve --workers`` added up
into one /metrics (``merge``, ``ServerMetrics.gathered``)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from dicomstore.services.metrics import ServerMetrics, merge


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_merge_sums_every_sample_but_keeps_the_earliest_creation() -> None:
    first, worker = ServerMetrics(), ServerMetrics()
    first.instances.labels("C-STORE").inc(3)
    worker.instances.labels("C-STORE").inc(4)
    worker.instances.labels("STOW-RS").inc(1)  # (a label only one process has)
    first.latency.labels("C-STORE").observe(0.002)
    worker.latency.labels("C-STORE").observe(0.02)
    first.open.set(2)
    worker.open.set(1)
    both = _samples(merge([first.exposition(), worker.exposition()]))
    assert both[("dicomstore_instances_stored_total", (("service", "C-STORE"),))] == 7
    assert both[("dicomstore_instances_stored_total", (("service", "STOW-RS"),))] == 1
    histogram = "dicomstore_store_duration_seconds"
    assert both[(f"{histogram}_count", (("service", "C-STORE"),))] == 2
    assert both[(f"{histogram}_bucket", (("le", "0.005"), ("service", "C-STORE")))] == 1
    assert both[(f"{histogram}_bucket", (("le", "+Inf"), ("service", "C-STORE")))] == 2
    assert both[("dicomstore_associations_open", ())] == 3
    created = ("dicomstore_instances_stored_created", (("service", "C-STORE"),))
    alone = [_samples(m.exposition())[created] for m in (first, worker)]
    assert both[created] == min(alone)


def test_gathered_adds_the_others_that_answer() -> None:
    first, worker = ServerMetrics(), ServerMetrics()
    first.instances.labels("C-STORE").inc(2)
    worker.instances.labels("C-STORE").inc(5)

    async def answers() -> bytes | None:
        return worker.exposition()

    async def silent() -> bytes | None:
        return None  # (a worker gone, or too slow: left out)

    first.others = [answers, silent]
    total = _samples(asyncio.run(first.gathered()))
    assert total[("dicomstore_instances_stored_total", (("service", "C-STORE"),))] == 7
    first.others = []
    assert asyncio.run(first.gathered()) == first.exposition()
