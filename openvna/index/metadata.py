"""Index reads behind WADO-RS metadata: the stored DICOM JSON headers of a study,
series or instance, in series then instance order, without opening any instance file
(ARCHITECTURE.md property 5)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, select

from openvna.index.schema import instances, series, studies


@dataclass(frozen=True)
class StoredHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    dicom_json: str
    """The header as stored: compact JSON text, relative BulkDataURIs (``bulkdata/TAG``)."""


def iter_headers(
    engine: Engine,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    *,
    batch: int = 500,
) -> Iterator[StoredHeader]:
    """Latest headers of the instances under the given entity, streamed in batches."""
    statement = (
        select(
            studies.c.study_instance_uid,
            series.c.series_instance_uid,
            instances.c.sop_instance_uid,
            instances.c.dicom_json,
        )
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .where(studies.c.study_instance_uid == study_uid, instances.c.is_latest.is_(True))
        .order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)
    )
    if series_uid is not None:
        statement = statement.where(series.c.series_instance_uid == series_uid)
    if sop_instance_uid is not None:
        statement = statement.where(instances.c.sop_instance_uid == sop_instance_uid)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=batch).execute(statement)
        for row in result:
            yield StoredHeader(*row)
