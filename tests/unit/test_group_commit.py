"""Concurrent ingests share index transactions without losing or double-counting rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import func, select

from openvna.app import open_archive
from openvna.archive.ingest import IngestResult, Origin
from openvna.config import load_settings
from openvna.index.repository import StoreOutcome
from openvna.index.schema import instances, series, studies
from openvna.sample.generator import generate_samples
from tests.conftest import temporary_postgres_database


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_ingest_counts_every_instance_once(tmp_path: Path, backend: str) -> None:
    generate_samples(tmp_path / "src", seed=11, patients=2, small=True)
    files = sorted((tmp_path / "src").rglob("*.dcm"))
    with ExitStack() as stack:
        database_url = None
        if backend == "postgresql":
            database_url = stack.enter_context(temporary_postgres_database())
        _ingest_twice_concurrently(tmp_path, files, database_url)


def _ingest_twice_concurrently(tmp_path: Path, files: list[Path], database_url: str | None) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data", database_url=database_url)
    archive, executor = open_archive(settings)

    def ingest(path: Path) -> IngestResult:
        with path.open("rb") as source:
            return archive.ingest_file(source, origin=Origin("test"))

    try:
        # every file twice, from eight threads: the second copy must be a duplicate
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(ingest, files + files))
        outcomes = [result.outcome for result in results]
        assert outcomes.count(StoreOutcome.STORED) == len(files)
        assert outcomes.count(StoreOutcome.DUPLICATE_SAME) == len(files)
        with archive.engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(instances)).scalar() == len(
                files
            )
            assert connection.execute(select(func.sum(series.c.number_of_instances))).scalar() == (
                len(files)
            )
            assert connection.execute(select(func.sum(studies.c.number_of_instances))).scalar() == (
                len(files)
            )
            stored_bytes = sum(
                archive.storage.size(key)
                for (key,) in connection.execute(select(instances.c.storage_key))
            )
            assert connection.execute(select(func.sum(studies.c.size_bytes))).scalar() == (
                stored_bytes
            )
        # duplicates left no second copy in storage
        assert len(list(archive.storage.iter_keys())) == len(files)
    finally:
        executor.shutdown()
        archive.close()
