"""Index read behind AI volume assembly: every stored instance of one series, with its
DICOM JSON header and where its Pixel Data lies, in one query.

Assembling a 300-slice CT volume must not open 300 files to learn their geometry: the
headers kept at ingest say where each slice lies (Image Position / Orientation (Patient),
PS3.3 C.7.6.2) and ``pixel_data_offset`` says where its pixels start, so the files are
only read for their pixel bytes (ARCHITECTURE.md property 5). Only the latest version of
each instance counts; the statement is built once at import.
"""

from __future__ import annotations

from sqlalchemy import Engine, bindparam, select

from openvna.errors import NotFoundError
from openvna.index.pixels import PIXEL_SOURCE_COLUMNS, PixelSource
from openvna.index.schema import instances, series, studies

_SERIES_SOURCES = (
    select(*PIXEL_SOURCE_COLUMNS)
    .select_from(instances)
    .join(series, instances.c.series_pk == series.c.pk)
    .join(studies, series.c.study_pk == studies.c.pk)
    .where(
        series.c.series_instance_uid == bindparam("series_instance_uid"),
        instances.c.is_latest.is_(True),
    )
    .order_by(instances.c.instance_number, instances.c.pk)
)


def find_series_sources(engine: Engine, series_instance_uid: str) -> list[PixelSource]:
    """The latest version of every instance of the series, in Instance Number order
    (arrival order among equal numbers).

    Raises
    ------
    NotFoundError
        The series does not exist or holds no instance (HTTP 404).
    """
    with engine.connect() as connection:
        rows = connection.execute(
            _SERIES_SOURCES, {"series_instance_uid": series_instance_uid}
        ).all()
    if not rows:
        raise NotFoundError(f"no instance in series {series_instance_uid}")
    return [PixelSource(*row) for row in rows]
