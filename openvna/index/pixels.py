"""Index reads behind WADO-RS frames, rendered and thumbnail resources and WADO-URI.

A frame request must cost one indexed lookup: where the instance's bytes are
(``storage_key``), how they are encoded (``transfer_syntax_uid``), where its Pixel Data
value starts in the stored file (``pixel_data_offset`` / ``pixel_data_length``, written
at ingest) and its DICOM JSON header, from which the frame geometry (Rows, Columns,
Bits Allocated, ...) is read without opening the file (ARCHITECTURE.md property 5).
The statements are built once at import so that each request only binds and executes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, select

from openvna.errors import NotFoundError
from openvna.index.schema import instances, series, studies


@dataclass(frozen=True, slots=True)
class PixelSource:
    """One stored instance as frame extraction and rendering need it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    storage_key: str
    transfer_syntax_uid: str
    pixel_data_offset: int | None
    """Offset of the Pixel Data value in the stored file; None for deflated or old rows."""
    pixel_data_length: int | None
    """Its value length; 0xFFFFFFFF when encapsulated (PS3.5 A.4)."""
    dicom_json: str
    """The stored DICOM JSON header (bulk data as BulkDataURI), compact text."""


PIXEL_SOURCE_COLUMNS = (
    studies.c.study_instance_uid,
    series.c.series_instance_uid,
    instances.c.sop_instance_uid,
    instances.c.storage_key,
    instances.c.transfer_syntax_uid,
    instances.c.pixel_data_offset,
    instances.c.pixel_data_length,
    instances.c.dicom_json,
)

_BY_UIDS = (
    select(*PIXEL_SOURCE_COLUMNS)
    .select_from(instances)
    .join(series, instances.c.series_pk == series.c.pk)
    .join(studies, series.c.study_pk == studies.c.pk)
    .where(
        instances.c.sop_instance_uid == bindparam("sop_instance_uid"),
        instances.c.is_latest.is_(True),
        series.c.series_instance_uid == bindparam("series_instance_uid"),
        studies.c.study_instance_uid == bindparam("study_instance_uid"),
    )
)

_IMAGES_OF_STUDY = (
    select(series.c.pk, instances.c.pk)
    .select_from(instances)
    .join(series, instances.c.series_pk == series.c.pk)
    .join(studies, series.c.study_pk == studies.c.pk)
    .where(
        studies.c.study_instance_uid == bindparam("study_instance_uid"),
        instances.c.is_latest.is_(True),
        instances.c.rows.is_not(None),
    )
    .order_by(series.c.series_number, series.c.pk, instances.c.instance_number, instances.c.pk)
)

_BY_PK = (
    select(*PIXEL_SOURCE_COLUMNS)
    .select_from(instances)
    .join(series, instances.c.series_pk == series.c.pk)
    .join(studies, series.c.study_pk == studies.c.pk)
    .where(instances.c.pk == bindparam("instance_pk"))
)

_IMAGES_OF_SERIES = _IMAGES_OF_STUDY.where(
    series.c.series_instance_uid == bindparam("series_instance_uid")
)


def find_pixel_source(
    engine: Engine, study_uid: str, series_uid: str, sop_instance_uid: str
) -> PixelSource:
    """The latest version of the instance at this study/series/instance triple.

    Raises
    ------
    NotFoundError
        No such instance under that study and series (HTTP 404).
    """
    with engine.connect() as connection:
        row = connection.execute(
            _BY_UIDS,
            {
                "sop_instance_uid": sop_instance_uid,
                "series_instance_uid": series_uid,
                "study_instance_uid": study_uid,
            },
        ).first()
    if row is None:
        raise NotFoundError(
            f"no instance {sop_instance_uid} in series {series_uid} of study {study_uid}"
        )
    return PixelSource(*row)


def find_representative(engine: Engine, study_uid: str, series_uid: str | None) -> PixelSource:
    """The image a study or series thumbnail shows (PS3.18 10.4.3.3.4 leaves the choice
    to the origin server).

    For a series: its middle image in Instance Number order. For a study: the middle
    image of its largest image series (ties: the lowest Series Number), so that a
    localizer or a dose report never stands for a CT study.

    Raises
    ------
    NotFoundError
        The study or series does not exist or holds no image (no Rows).
    """
    with engine.connect() as connection:
        if series_uid is None:
            rows = connection.execute(_IMAGES_OF_STUDY, {"study_instance_uid": study_uid}).all()
        else:
            rows = connection.execute(
                _IMAGES_OF_SERIES,
                {"study_instance_uid": study_uid, "series_instance_uid": series_uid},
            ).all()
        if not rows:
            what = f"series {series_uid} of study {study_uid}" if series_uid else study_uid
            raise NotFoundError(f"no image instance in {what}")
        by_series: dict[int, list[int]] = {}
        for series_pk, instance_pk in rows:
            by_series.setdefault(series_pk, []).append(instance_pk)
        largest = max(by_series.values(), key=len)  # first of equals: lowest Series Number
        chosen = largest[(len(largest) - 1) // 2]
        row = connection.execute(_BY_PK, {"instance_pk": chosen}).one()
    return PixelSource(*row)
