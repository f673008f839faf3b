"""AI orchestration benchmarks against a real ``openvna serve`` (issue #4):

1. orchestration overhead for a 300-slice CT: from ``StudyStable`` (the job's creation)
   to the model's start, and from the model's output to its SR/SEG stored, measured from
   the provenance record (the model itself is a trivial threshold, so its own time is
   reported apart);
2. volume assembly is measured by ``benchmarks/volume_bench.py``;
3. ingest throughput (storescu, one association) while 4 CPU-heavy AI jobs run,
   against the same server idle. Target: at least 90 % of idle.

Run: ``.venv/bin/python benchmarks/ai_bench.py`` (``--slices``, ``--ingest``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import (
    DCMTK_ENV,
    HOST,
    BenchError,
    console,
    free_port,
    openvna_executable,
    stop_process,
    wait_until,
)

from openvna.sample.generator import generate_ct_series

MODELS_PY = '''
"""Benchmark models: a trivial one (orchestration overhead) and a CPU-heavy one (load)."""
import time
import numpy as np
from scipy import ndimage
from openvna.ai.outputs import (ANATOMICAL_STRUCTURE, MILLILITRE, Code, Measurement,
                                ModelOutput, Segment)

BONE = Code("bone", "99OPENVNABENCH", "Bone")
VOLUME = Code("118565006", "SCT", "Volume")


def trivial(model_input):
    volume = model_input.native or model_input.volume
    mask = volume.voxels > 300.0
    return ModelOutput(
        measurements=[Measurement(VOLUME, float(mask.sum()) * volume.voxel_volume_ml,
                                  MILLILITRE, segment_number=1)],
        segments=[Segment("Bone", ANATOMICAL_STRUCTURE, BONE, mask)],
        priority=0.5,
    )


def busy(model_input):
    volume = model_input.volume.voxels[:64]
    deadline = time.monotonic() + float(model_input.parameters.get("seconds", 30))
    while time.monotonic() < deadline:
        ndimage.gaussian_filter(volume, 2.0)
    return ModelOutput(priority=0.1)
'''

TRIVIAL_TOML = """
name = "bench-trivial"
version = "1"
[input]
modalities = ["CT"]
series_description = "AI BENCH"
[outputs]
measurements = true
segmentation = true
priority = true
[runtime]
kind = "python"
entrypoint = "bench_models:trivial"
"""

BUSY_TOML = """
name = "bench-busy"
version = "1"
run_on_arrival = false
[input]
modalities = ["CT"]
[outputs]
priority = true
[runtime]
kind = "python"
entrypoint = "bench_models:busy"
parameters = { seconds = 600 }
[resources]
max_concurrency = 4
timeout_seconds = 900
"""


def api(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def storescu(port: int, files: list[Path]) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aec", "OPENVNA", HOST, str(port), *map(str, files)],
        capture_output=True, text=True, env=DCMTK_ENV,
    )
    if result.returncode != 0:
        raise BenchError(f"storescu failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices for the AI job")
    parser.add_argument("--ingest", type=int, default=200, help="instances per ingest run")
    parser.add_argument("--rounds", type=int, default=3, help="idle/loaded ingest pairs")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent AI jobs under load")
    parser.add_argument("--ai-cpus", default="", help="ai.cpus for the server, e.g. '[1]'")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openvna-ai-bench-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        models = work / "models"
        for name, text in (("trivial", TRIVIAL_TOML), ("busy", BUSY_TOML)):
            (models / name).mkdir(parents=True)
            (models / name / "manifest.toml").write_text(text)
        (models / "bench_models.py").write_text(MODELS_PY)
        console.print(f"writing a {args.slices}-slice CT and {2 * args.rounds} ingest sets …")
        ct = generate_ct_series(work / "ct", instances=args.slices, patient_id="AIBENCH")
        for path in ct:  # rules pick the trivial model by this description
            _retag(path)
        ingest_sets = [
            generate_ct_series(work / f"ingest{n}", instances=args.ingest, seed=10 + n,
                               patient_id=f"INGEST{n}")
            for n in range(2 * args.rounds)
        ]  # fmt: skip
        dicom_port, http_port = free_port(), free_port()
        env = {
            **DCMTK_ENV,
            "PYTHONPATH": str(models),
            "OPENVNA_AI__MODELS_DIR": str(models),
            "OPENVNA_AI__BUILTIN_MODELS": "false",
            "OPENVNA_AI__WORKERS": str(max(args.jobs, 1)),
        }
        if args.ai_cpus:
            env["OPENVNA_AI__CPUS"] = args.ai_cpus
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [*openvna_executable(None), "serve", "--data-dir", str(work / "data"),
             "--dicom-port", str(dicom_port), "--http-port", str(http_port),
             "--stable-after", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        wait_until(lambda: _answers(http_port), 120, "openvna to start")

        # (1) orchestration overhead
        storescu(dicom_port, ct)
        study = _study_uid(ct[0])
        wait_until(lambda: _final(http_port, study), 600, "the AI job to end")
        job = api(http_port, f"/api/ai/jobs?study={study}")[0]
        if job["state"] != "completed":
            raise BenchError(f"AI job ended {job['state']}: {job['error']}")
        run = api(http_port, f"/api/ai/jobs/{job['jobUID']}")["runs"][0]
        timings = run["result"]["timings"]
        to_start = run["startedAt"] - job["createdAt"]
        output_to_stored = timings["build"] + timings["store"] + max(
            0.0, run["finishedAt"] - run["startedAt"] - sum(timings.values())
        )

        # (3) ingest idle vs with AI jobs running, in alternating rounds
        ratios: list[tuple[float, float]] = []
        for round_number in range(args.rounds):
            idle_seconds = storescu(dicom_port, ingest_sets[2 * round_number])
            api(http_port, "/api/ai/models/bench-busy/start", {"by": "benchmark"})
            for _ in range(args.jobs):
                api(http_port, "/api/ai/jobs", {"study": study, "models": ["bench-busy"]})
            wait_until(
                lambda: len(api(http_port, "/api/ai/jobs?state=running&model=bench-busy"))
                >= args.jobs, 120, f"{args.jobs} busy jobs running",
            )  # fmt: skip
            time.sleep(3)  # let every job get past assembly into its compute loop
            loaded_seconds = storescu(dicom_port, ingest_sets[2 * round_number + 1])
            api(http_port, "/api/ai/models/bench-busy/stop", {"by": "benchmark"})
            wait_until(
                lambda: not api(http_port, "/api/ai/jobs?state=running&model=bench-busy"),
                30, "busy jobs stopped",
            )  # fmt: skip
            ratios.append((args.ingest / idle_seconds, args.ingest / loaded_seconds))

        table = Table(title=f"AI orchestration ({os.cpu_count()} cores)")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("StudyStable → attempt started", f"{to_start:.3f} s")
        table.add_row(f"input assembly ({args.slices} slices)", f"{timings['assemble']:.3f} s")
        table.add_row("model's own time (trivial threshold)", f"{timings['model']:.3f} s")
        table.add_row("  SR + SEG built", f"{timings['build']:.3f} s")
        table.add_row("  SR + SEG stored (ingest)", f"{timings['store']:.3f} s")
        table.add_row("model output → SR + SEG stored and recorded", f"{output_to_stored:.3f} s")
        table.add_row(
            "orchestration overhead (start + store, assembly excluded)",
            f"{to_start + output_to_stored:.3f} s",
        )
        table.add_row(
            "orchestration overhead incl. assembly",
            f"{to_start + output_to_stored + timings['assemble']:.3f} s",
        )
        for number, (idle_rate, loaded_rate) in enumerate(ratios, start=1):
            table.add_row(
                f"round {number}: ingest idle / with {args.jobs} AI jobs (storescu, 1 assoc)",
                f"{idle_rate:.1f} / {loaded_rate:.1f} inst/s "
                f"({100 * loaded_rate / idle_rate:.0f} %)",
            )
        median = statistics.median(loaded / idle for idle, loaded in ratios)
        table.add_row("median ratio (target ≥ 90 %)", f"{100 * median:.0f} %")
        console.print(table)
        return 0
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(work, ignore_errors=True)


def _retag(path: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(path)
    dataset.SeriesDescription = "AI BENCH 300"
    dataset.save_as(path)


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _answers(port: int) -> bool:
    try:
        api(port, "/api/health")
        return True
    except OSError:
        return False


def _final(port: int, study: str) -> bool:
    jobs = api(port, f"/api/ai/jobs?study={study}")
    return bool(jobs) and all(job["state"] in ("completed", "failed", "cancelled") for job in jobs)


if __name__ == "__main__":
    raise SystemExit(main())
