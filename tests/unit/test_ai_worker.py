"""Where the AI worker may run: CPU affinity that keeps one CPU free for ingest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openvna.ai.worker import ai_cpus, gpu_count

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only"
)


def test_default_leaves_the_first_cpu_to_the_archive() -> None:
    available = os.sched_getaffinity(0)
    chosen = ai_cpus(None)
    if len(available) > 1:
        assert chosen == available - {min(available)}
    else:
        assert chosen == set()  # one CPU: nothing to reserve, affinity left alone


def test_configured_cpus_are_kept_within_what_exists() -> None:
    available = os.sched_getaffinity(0)
    first = min(available)
    assert ai_cpus([first]) == {first}
    assert ai_cpus([10_000]) == available  # none of them exists: no restriction


def test_gpu_count_counts_gpu_nodes_only(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidia12", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    assert gpu_count(tmp_path) == 3
    assert gpu_count(tmp_path / "empty") == 0  # no such folder: no GPU
