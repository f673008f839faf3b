"""Findings, measurements and the priority score as a TID 1500 Measurement Report in a
Comprehensive 3D SR (PS3.3 A.35.13, PS3.16 TID 1500).

Structure of the report:

* Observation context (TID 1001/1002/1004): a DEVICE observer naming the algorithm
  (name and version, manufacturer, model name), so a reader knows no person made it.
* Procedure reported: the imaging procedure of the source modality.
* Image library (TID 1600): the first source instance, describing the source series;
  every source instance is in the evidence.
* One TID 1411 volumetric group per segment that has measurements, referencing that
  segment of the SEG built in the same call (Referenced Segment) and sharing its
  Tracking UID.
* One group per finding (TID 1411 when tied to a segment, TID 1501 otherwise): the
  finding as a qualitative evaluation (finding concept = Present/Absent) and its
  probability as a measurement (DCM 122157, unit ``1``).
* One TID 1501 group for the measurements about no segment and the priority score.

Every measurement carries TID 4019 Algorithm Identification. The report is complete but
neither final nor verified: an AI result awaits a reader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from openvna.ai.inputs import Volume
from openvna.ai.outputs import Code, Finding, Measurement, ModelOutput, Segment
from openvna.ai.results.codes import (
    ABSENT,
    NO_UNITS,
    PRESENT,
    PRIORITY_SCORE,
    PROBABILITY,
    coded,
    private_schemes,
    procedure_for,
)
from openvna.ai.results.errors import ResultEncodingError
from openvna.ai.results.identity import AlgorithmIdentity, stamp_creation
from openvna.ai.results.seg import segment_tracking_uid

logger = logging.getLogger(__name__)

Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def build_measurement_report(
    output: ModelOutput,
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    segmentation: hd.seg.Segmentation | None,
    series_number: int,
    created: datetime,
) -> hd.sr.Comprehensive3DSR:
    """The SR of ``output``'s findings, measurements and priority.

    ``segmentation`` is the SEG of ``output.segments`` written in the same call; without
    it, results about a segment are reported in plain TID 1501 groups naming the
    segment's type instead of referencing it.

    Raises
    ------
    ResultEncodingError
        When the output has nothing to report or highdicom rejects the content.
    """
    if not (output.findings or output.measurements or output.priority is not None):
        raise ResultEncodingError("a measurement report needs findings or measurements")
    writer = _ReportWriter(output, volume, algorithm, segmentation)
    try:
        report = hd.sr.MeasurementReport(
            observation_context=writer.observation_context(),
            procedure_reported=coded(procedure_for(volume.modality)),
            imaging_measurements=writer.groups(),
            referenced_images=library_headers(volume) or None,
        )
        evidence: list[Dataset] = [*volume.datasets]
        if segmentation is not None:
            evidence.append(segmentation)
        document = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=algorithm.uid("sr", "series"),
            series_number=series_number,
            sop_instance_uid=algorithm.uid("sr", "instance"),
            instance_number=1,
            manufacturer=algorithm.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=algorithm.series_description,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
            coding_schemes=private_schemes(_codes_used(output)),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ResultEncodingError(f"highdicom refused the measurement report: {error}") from error
    stamp_creation(document, created)
    return document


class _ReportWriter:
    """Turns one output into TID 1500 content; holds what every group shares."""

    def __init__(
        self,
        output: ModelOutput,
        volume: Volume,
        algorithm: AlgorithmIdentity,
        segmentation: hd.seg.Segmentation | None,
    ) -> None:
        self.output = output
        self.volume = volume
        self.algorithm = algorithm
        self.segmentation = segmentation
        self.algorithm_id = hd.sr.AlgorithmIdentification(
            name=algorithm.name, version=algorithm.version
        )

    def observation_context(self) -> hd.sr.ObservationContext:
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=self.algorithm.device_uid(),
            name=self.algorithm.label[:64],
            manufacturer_name=self.algorithm.manufacturer,
            model_name=self.algorithm.name,
            serial_number=self.algorithm.artifact_sha256 or None,
        )
        return hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=device,
            )
        )

    def groups(self) -> list[Group]:
        groups: list[Group] = []
        for number, segment in enumerate(self.output.segments, start=1):
            measured = [m for m in self.output.measurements if m.segment_number == number]
            if measured:
                groups.append(self._segment_group(number, segment, measured))
        for index, finding in enumerate(self.output.findings, start=1):
            groups.append(self._finding_group(index, finding))
        unattached = [m for m in self.output.measurements if m.segment_number is None]
        if unattached or self.output.priority is not None:
            groups.append(self._study_group(unattached))
        return groups

    def _segment_group(self, number: int, segment: Segment, measured: list[Measurement]) -> Group:
        return self._group(
            tracking=hd.sr.TrackingIdentifier(
                uid=segment_tracking_uid(self.algorithm, number),
                identifier=f"Segment {number}: {segment.label}"[:64],
            ),
            segment_number=number,
            finding_type=segment.type,
            measurements=[self._measurement(m) for m in measured],
            qualitative=[],
        )

    def _finding_group(self, index: int, finding: Finding) -> Group:
        presence = PRESENT if finding.present else ABSENT
        measurements: list[hd.sr.Measurement] = []
        if finding.probability is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=coded(PROBABILITY),
                    value=float(finding.probability),
                    unit=coded(NO_UNITS),
                    algorithm_id=self.algorithm_id,
                    finding_sites=_sites(finding.finding_site),
                )
            )
        return self._group(
            tracking=hd.sr.TrackingIdentifier(
                uid=self.algorithm.uid("finding", index),
                identifier=f"Finding {index}: {finding.finding.meaning}"[:64],
            ),
            segment_number=finding.segment_number,
            # An absent finding has no finding type: "Finding: nodule" would mislead.
            finding_type=finding.finding if finding.present else None,
            measurements=measurements,
            qualitative=[hd.sr.QualitativeEvaluation(coded(finding.finding), coded(presence))],
            finding_site=finding.finding_site,
        )

    def _study_group(self, measured: list[Measurement]) -> Group:
        measurements = [self._measurement(m) for m in measured]
        if self.output.priority is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=coded(PRIORITY_SCORE),
                    value=float(self.output.priority),
                    unit=coded(NO_UNITS),
                    algorithm_id=self.algorithm_id,
                )
            )
        return self._group(
            tracking=hd.sr.TrackingIdentifier(
                uid=self.algorithm.uid("series-measurements"),
                identifier="Series measurements",
            ),
            segment_number=None,
            finding_type=None,
            measurements=measurements,
            qualitative=[],
        )

    def _group(
        self,
        *,
        tracking: hd.sr.TrackingIdentifier,
        segment_number: int | None,
        finding_type: Code | None,
        measurements: list[hd.sr.Measurement],
        qualitative: list[hd.sr.QualitativeEvaluation],
        finding_site: Code | None = None,
    ) -> Group:
        sites = _sites(finding_site)
        if segment_number is not None and self.segmentation is not None:
            return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=self._referenced_segment(segment_number),
                finding_type=coded(finding_type) if finding_type else None,
                algorithm_id=self.algorithm_id,
                finding_sites=sites,
                measurements=measurements or None,
                qualitative_evaluations=qualitative or None,
            )
        if segment_number is not None and finding_type is None:
            # Without the SEG, name the region the results are about by its type.
            finding_type = self.output.segments[segment_number - 1].type
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=coded(finding_type) if finding_type else None,
            algorithm_id=self.algorithm_id,
            finding_sites=sites,
            measurements=measurements or None,
            qualitative_evaluations=qualitative or None,
            source_images=self._source_images(),
        )

    def _measurement(self, measurement: Measurement) -> hd.sr.Measurement:
        return hd.sr.Measurement(
            name=coded(measurement.name),
            value=float(measurement.value),
            unit=coded(measurement.unit),
            algorithm_id=self.algorithm_id,
            finding_sites=_sites(measurement.finding_site),
        )

    def _referenced_segment(self, number: int) -> hd.sr.ReferencedSegment:
        """The segment in the SEG, with the source images it was drawn on (those whose
        mask is not empty) for a single image; for a volume, its source series.

        The SEG's own frames name each frame's source image and every source instance
        is in the evidence, so repeating hundreds of image references in each group only
        made a 300-slice report a second slower to build and to ingest (TID 1411 allows
        either form).
        """
        assert self.segmentation is not None
        mask = self.output.segments[number - 1].mask
        slices = [index for index in range(mask.shape[0]) if mask[index].any()]
        sop_class_uid = str(self.segmentation.SOPClassUID)
        sop_instance_uid = str(self.segmentation.SOPInstanceUID)
        if not slices or len(self.volume.datasets) > 1:
            return hd.sr.ReferencedSegment(
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(self.volume.series_instance_uid),
            )
        return hd.sr.ReferencedSegment(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            segment_number=number,
            source_images=[
                hd.sr.SourceImageForSegmentation(uid_class, uid, frames)
                for uid_class, uid, frames in _instances(self.volume, slices)
            ],
        )

    def _source_images(self) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
        """The source image of a single-image input; none for a volume (its instances
        are all in the evidence, see :meth:`_referenced_segment`)."""
        if len(self.volume.datasets) > 1:
            return None
        every_slice = range(self.volume.shape[0])
        return [
            hd.sr.SourceImageForMeasurementGroup(uid_class, uid, frames)
            for uid_class, uid, frames in _instances(self.volume, every_slice)
        ]


def library_headers(volume: Volume) -> list[Dataset]:
    """Headers for the image library (TID 1601): the first source instance, which
    describes the source series (modality, frame of reference, geometry).

    The content refers to images only through the SEG and the source series, and every
    source instance is listed in the evidence (Current Requested Procedure Evidence), so
    one entry is enough; an entry per slice made a 300-slice report take 15 s to build.

    highdicom describes an entry (TID 1604/1603) from single-frame attributes; for an
    enhanced multi-frame header those live in the functional groups, so a copy with the
    first frame's Pixel Measures, Plane Orientation and Plane Position at the top level
    is described instead. A header highdicom still cannot describe is left out of the
    library (it stays in the evidence and in the groups' source references).
    """
    headers: list[Dataset] = []
    for header in volume.datasets[:1]:
        candidate = _flatten_frame_geometry(header)
        try:
            hd.sr.ImageLibraryEntryDescriptors(candidate)
        except (AttributeError, ValueError, TypeError) as error:
            logger.warning(
                "image %s left out of the image library: %s", header.SOPInstanceUID, error
            )
            continue
        headers.append(candidate)
    return headers


def _flatten_frame_geometry(header: Dataset) -> Dataset:
    if "PixelSpacing" in header or "PerFrameFunctionalGroupsSequence" not in header:
        return header
    flat = Dataset(header)
    groups = [header.PerFrameFunctionalGroupsSequence[0]]
    groups += list(header.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for sequence, keywords in (
            ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness")),
            ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
            ("PlanePositionSequence", ("ImagePositionPatient",)),
        ):
            if sequence in group:
                for keyword in keywords:
                    if keyword in group[sequence][0] and keyword not in flat:
                        setattr(flat, keyword, group[sequence][0][keyword].value)
    return flat


def _codes_used(output: ModelOutput) -> list[Code | None]:
    used: list[Code | None] = [PRIORITY_SCORE] if output.priority is not None else []
    for finding in output.findings:
        used += [finding.finding, finding.finding_site]
    for measurement in output.measurements:
        used += [measurement.name, measurement.unit, measurement.finding_site]
    for segment in output.segments:
        used += [segment.category, segment.type]
    return used


def _sites(site: Code | None) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(coded(site))] if site is not None else None


def _instances(volume: Volume, slices: Sequence[int]) -> list[tuple[str, str, list[int] | None]]:
    """(SOP Class UID, SOP Instance UID, frame numbers or None) of the instances the
    given slices came from, each instance once, in slice order."""
    frames_of: dict[tuple[str, str], list[int]] = {}
    single: set[tuple[str, str]] = set()
    for index in slices:
        source = volume.sources[index]
        key = (source.sop_class_uid, source.sop_instance_uid)
        frames_of.setdefault(key, [])
        if source.frame_number is None:
            single.add(key)
        else:
            frames_of[key].append(source.frame_number)
    return [
        (uid_class, uid, None if (uid_class, uid) in single else sorted(frames))
        for (uid_class, uid), frames in frames_of.items()
    ]
