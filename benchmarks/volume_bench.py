#!/usr/bin/env python3
"""AI input assembly benchmark: a stored CT series into one volume, against the naive way.

Writes one synthetic axial CT series with ``openvna.sample.generate_ct_series`` (300
slices of 512x512 by default, no real patient data), ingests it into a fresh archive
(SQLite index, file storage, in process) and times, after one warm-up run each (so both
read from the page cache):

* ``assemble_series``: headers from the index's DICOM JSON, pixels read at the recorded
  Pixel Data offset, geometry checked, slices ordered along the normal, rescaled to HU;
* the naive loop a model script would write: ``dcmread`` every file, ``pixel_array``,
  sort by Instance Number, rescale with Rescale Slope/Intercept, ``np.stack``.

Both must give the same HU values (the naive stack in Instance Number order, which runs
head to feet here, is compared reversed); a mismatch is a failed run (exit status 1).
See ``benchmarks/README.md``. Usage::

    python benchmarks/volume_bench.py [--slices 300] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _servers import console
from pydicom import dcmread
from rich.table import Table

from openvna.ai.volume import assemble_series
from openvna.archive.events import EventBus
from openvna.archive.ingest import Origin
from openvna.archive.service import Archive
from openvna.config import load_settings
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.sample import generate_ct_series
from openvna.storage.filesystem import FilesystemStorage
from openvna.tasks.inprocess import InProcessExecutor


def open_core(data_dir: Path) -> tuple[Archive, InProcessExecutor]:
    """The archive core as ``openvna.app.open_archive`` builds it."""
    settings = load_settings(None, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.index_url, sqlite_synchronous="OFF")
    upgrade_schema(engine)
    executor = InProcessExecutor()
    storage = FilesystemStorage(settings.storage_dir)
    return Archive(settings, engine, storage, EventBus(executor)), executor


def naive_volume(paths: Sequence[Path]) -> npt.NDArray[np.float32]:
    """What a script without an archive does: parse every file, sort, rescale."""
    slices = []
    for path in paths:
        dataset = dcmread(path)
        values = dataset.pixel_array.astype(np.float32)
        values = values * float(dataset.get("RescaleSlope", 1)) + float(
            dataset.get("RescaleIntercept", 0)
        )
        slices.append((int(dataset.InstanceNumber), values.astype(np.float32)))
    slices.sort(key=lambda item: item[0])
    return np.stack([values for _, values in slices])


def timed(run: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    result = run()  # warm-up: page cache, imports, codec set-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return times, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs each (default 5)")
    parser.add_argument("--workdir", type=Path, help="keep files and archive here")
    parser.add_argument("--json", type=Path, help="write the raw numbers to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="volume-bench-") as temporary:
        work = args.workdir or Path(temporary)
        console.print(f"writing {args.slices} CT slices of {args.size}x{args.size} ...")
        paths = generate_ct_series(
            work / "series", instances=args.slices, rows=args.size, columns=args.size
        )
        archive, executor = open_core(work / "archive")
        try:
            started = time.perf_counter()
            for path in paths:
                with path.open("rb") as stream:
                    archive.ingest_file(stream, origin=Origin("benchmark"))
            ingest_seconds = time.perf_counter() - started
            series_uid = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
            archive_times, volume = timed(
                lambda: assemble_series(archive, series_uid), args.repeats
            )
            naive_times, naive = timed(lambda: naive_volume(paths), args.repeats)
        finally:
            executor.shutdown()
            archive.close()

    same = bool(np.array_equal(volume.voxels, naive[::-1]))
    archive_median = statistics.median(archive_times)
    naive_median = statistics.median(naive_times)
    report = {
        "slices": args.slices,
        "size": args.size,
        "bytes_per_slice": args.size * args.size * 2,
        "cpus": os.cpu_count(),
        "ingest_seconds": ingest_seconds,
        "assemble_series_seconds": archive_times,
        "naive_seconds": naive_times,
        "same_values": same,
        "spacing": volume.spacing,
        "warnings": volume.warnings,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    table = Table(
        title=(
            f"Volume assembly: {args.slices} CT slices of {args.size}x{args.size} int16 "
            f"into float32 HU"
        ),
        caption=(
            f"median of {args.repeats} runs after a warm-up; {os.cpu_count()} CPUs; "
            f"ingest took {ingest_seconds:.1f} s"
        ),
    )
    table.add_column("method")
    table.add_column("seconds", justify="right")
    table.add_column("slices/s", justify="right")
    table.add_column("speed-up", justify="right")
    table.add_row(
        "naive pydicom loop (dcmread, pixel_array, sort, rescale)",
        f"{naive_median:.3f}",
        f"{args.slices / naive_median:,.0f}",
        "1.0x",
    )
    table.add_row(
        "assemble_series (index headers, pread at offset)",
        f"{archive_median:.3f}",
        f"{args.slices / archive_median:,.0f}",
        f"{naive_median / archive_median:.1f}x",
    )
    console.print(table)
    if not same:
        console.print("[red]error:[/red] the two volumes differ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
