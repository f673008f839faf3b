"""One entry point from a model output to the DICOM objects written back to the archive.

Order matters: the SEG is built first so the SR can reference its segments. Each kind
gets its own series in the source study (PS3.3 C.7.3: a series holds one modality),
numbered from ``series_number``: SEG ``n``, SR ``n + 1``, secondary captures ``n + 2``,
parametric maps ``n + 3``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from openvna.ai.inputs import Volume
from openvna.ai.outputs import ModelOutput
from openvna.ai.results.capture import build_secondary_capture
from openvna.ai.results.errors import ResultEncodingError
from openvna.ai.results.identity import AlgorithmIdentity
from openvna.ai.results.parametric import build_parametric_map
from openvna.ai.results.seg import build_segmentation
from openvna.ai.results.sr import build_measurement_report

ResultKind = Literal["seg", "sr", "sc", "pm"]


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object made from a model output, ready for the ingest path."""

    kind: ResultKind
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    def to_bytes(self) -> bytes:
        return to_part10_bytes(self.dataset)


def build_result_datasets(
    output: ModelOutput,
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    series_number: int = 9000,
    created: datetime | None = None,
) -> list[ResultObject]:
    """The SEG, SR, secondary captures and parametric maps that record ``output``.

    ``volume`` is the *native* volume the output refers to (masks in its geometry);
    ``created`` (default: now, local time) becomes the instance creation and content
    date and time. An output with nothing to record gives an empty list.

    Raises
    ------
    ResultEncodingError
        When part of the output does not fit the volume or cannot be encoded
        (:class:`UnsupportedResultError` for what this archive does not encode yet).
    """
    if not volume.datasets:
        raise ResultEncodingError("the volume has no source headers to derive results from")
    moment = created if created is not None else datetime.now().astimezone()
    results: list[ResultObject] = []
    segmentation = None
    if output.segments:
        segmentation = build_segmentation(
            output.segments, volume, algorithm, series_number=series_number, created=moment
        )
        results.append(ResultObject("seg", segmentation))
    if output.findings or output.measurements or output.priority is not None:
        report = build_measurement_report(
            output,
            volume,
            algorithm,
            segmentation=segmentation,
            series_number=series_number + 1,
            created=moment,
        )
        results.append(ResultObject("sr", report))
    captures = [i for i in output.derived_images if i.kind == "secondary-capture"]
    for number, image in enumerate(captures, start=1):
        capture = build_secondary_capture(
            image,
            volume,
            algorithm,
            series_number=series_number + 2,
            instance_number=number,
            created=moment,
        )
        results.append(ResultObject("sc", capture))
    maps = [i for i in output.derived_images if i.kind == "parametric-map"]
    for number, image in enumerate(maps, start=1):
        parametric_map = build_parametric_map(
            image,
            volume,
            algorithm,
            series_number=series_number + 3,
            instance_number=number,
            created=moment,
        )
        results.append(ResultObject("pm", parametric_map))
    return results


def to_part10_bytes(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM Part 10 file (PS3.10 7.1): 128-byte preamble, ``DICM``,
    File Meta Information, then the data set. Uncompressed data sets are written
    Explicit VR Little Endian, the transfer syntax every receiver must accept after
    the default one and the only one that keeps VRs of private elements."""
    meta = FileMetaDataset(getattr(dataset, "file_meta", FileMetaDataset()))
    transfer_syntax = meta.get("TransferSyntaxUID")
    if transfer_syntax is None or transfer_syntax == ImplicitVRLittleEndian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    copy = Dataset(dataset)
    copy.file_meta = meta
    buffer = io.BytesIO()
    dcmwrite(buffer, copy, enforce_file_format=True)
    return buffer.getvalue()
