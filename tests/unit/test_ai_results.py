"""AI results written back as DICOM: SEG, TID 1500 SR, secondary captures, parametric maps.

Every test builds a small synthetic volume from pydicom headers (no pixel data, as the
orchestrator hands them over), writes the result objects to Part 10 bytes and reads them
back with pydicom and highdicom: what is asserted is what a viewer or a downstream
system would see.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import replace

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from openvna.ai.inputs import SourceFrame, Volume
from openvna.ai.outputs import (
    ANATOMICAL_STRUCTURE,
    HOUNSFIELD_UNIT,
    LUNG,
    MILLILITRE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    PERCENT,
    Code,
    DerivedImage,
    Finding,
    Measurement,
    ModelOutput,
    Segment,
)
from openvna.ai.results import (
    AlgorithmIdentity,
    ResultEncodingError,
    ResultObject,
    UnsupportedResultError,
    build_result_datasets,
    to_part10_bytes,
)
from tests.conftest import require_tool

NODULE = Code("27925004", "SCT", "Nodule")
PNEUMOTHORAX = Code("36118008", "SCT", "Pneumothorax")
VOLUME_CODE = Code("118565006", "SCT", "Volume")
MEAN_DENSITY = Code("112031", "DCM", "Attenuation Coefficient")
EMPHYSEMA_INDEX = Code("EMPH-INDEX", "99OPENVNA", "Emphysema index")
ALGORITHM = AlgorithmIdentity(
    name="ct-lung", version="1.2.0", artifact_sha256="ab" * 32, job_uid="2.25.1234567"
)


def ct_volume(slices: int = 10, size: int = 32) -> Volume:
    """A CT series of ``slices`` single-frame headers; instance numbers run opposite to
    the slice order so a writer that sorted by them would misplace every frame."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets: list[Dataset] = []
    for index in range(slices):
        header = _patient_study(Dataset(), study)
        header.SOPClassUID = CTImageStorage
        header.SOPInstanceUID = generate_uid()
        header.SeriesInstanceUID = series
        header.FrameOfReferenceUID = frame_of_reference
        header.PositionReferenceIndicator = ""
        header.Modality = "CT"
        header.SeriesNumber = 3
        header.InstanceNumber = slices - index
        header.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        header.ImagePositionPatient = [-12.8, -12.8, -40.0 + 2.5 * index]
        header.PixelSpacing = [0.8, 0.8]
        header.SliceThickness = 2.5
        _pixel_module(header, size, size, bits=16)
        datasets.append(header)
    return Volume(
        voxels=np.zeros((slices, size, size), dtype=np.float32),
        spacing=(2.5, 0.8, 0.8),
        origin=(-12.8, -12.8, -40.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        frame_of_reference_uid=frame_of_reference,
        sources=[SourceFrame(str(h.SOPInstanceUID), str(h.SOPClassUID)) for h in datasets],
        datasets=datasets,
    )


def dx_volume(rows: int = 48, columns: int = 40) -> Volume:
    """One DX image: no frame of reference, a Patient Orientation, a 2D volume."""
    study = generate_uid()
    header = _patient_study(Dataset(), study)
    header.SOPClassUID = DigitalXRayImageStorageForPresentation
    header.SOPInstanceUID = generate_uid()
    header.SeriesInstanceUID = generate_uid()
    header.Modality = "DX"
    header.SeriesNumber = 1
    header.InstanceNumber = 1
    header.PatientOrientation = ["P", "F"]
    header.ImagerPixelSpacing = [0.2, 0.2]
    _pixel_module(header, rows, columns, bits=16)
    return Volume(
        voxels=np.zeros((1, rows, columns), dtype=np.float32),
        spacing=(0.0, 0.2, 0.2),
        origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        study_instance_uid=study,
        series_instance_uid=str(header.SeriesInstanceUID),
        modality="DX",
        frame_of_reference_uid="",
        sources=[SourceFrame(str(header.SOPInstanceUID), str(header.SOPClassUID))],
        datasets=[header],
        is_2d=True,
    )


def _patient_study(header: Dataset, study: str) -> Dataset:
    header.PatientID = "SYN-0042"
    header.PatientName = "SYNTHETIC^PATIENT"
    header.PatientBirthDate = "19600101"
    header.PatientSex = "O"
    header.StudyInstanceUID = study
    header.StudyDate = "20240315"
    header.StudyTime = "101500"
    header.StudyID = "42"
    header.AccessionNumber = "ACC42"
    header.ReferringPhysicianName = ""
    header.Manufacturer = "OpenVNA Synthetic"
    return header


def _pixel_module(header: Dataset, rows: int, columns: int, *, bits: int) -> None:
    header.Rows = rows
    header.Columns = columns
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    header.BitsAllocated = bits
    header.BitsStored = 12
    header.HighBit = 11
    header.PixelRepresentation = 0


def box(
    shape: tuple[int, int, int], slices: slice, rows: slice, columns: slice
) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=np.bool_)
    mask[slices, rows, columns] = True
    return mask


def ct_output(volume: Volume) -> ModelOutput:
    lung = box(volume.shape, slice(1, 9), slice(4, 28), slice(2, 15))
    lung[5, 10:12, 5:7] = False  # a hole, so reassembly is checked voxel by voxel
    nodule = box(volume.shape, slice(6, 8), slice(20, 25), slice(20, 26))
    return ModelOutput(
        segments=[
            Segment("Left lung", ANATOMICAL_STRUCTURE, LUNG, lung),
            Segment("Nodule", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NODULE, nodule),
        ],
        measurements=[
            Measurement(VOLUME_CODE, 1234.5, MILLILITRE, finding_site=LUNG, segment_number=1),
            Measurement(MEAN_DENSITY, -862.0, HOUNSFIELD_UNIT, segment_number=1),
            Measurement(VOLUME_CODE, 0.42, MILLILITRE, segment_number=2),
            Measurement(EMPHYSEMA_INDEX, 7.5, PERCENT, finding_site=LUNG),
        ],
        findings=[
            Finding(NODULE, True, probability=0.87, finding_site=LUNG, segment_number=2),
            Finding(PNEUMOTHORAX, False, probability=0.03),
        ],
        priority=0.8,
        summary="Solid nodule in the left lung.",
    )


def by_kind(results: list[ResultObject], kind: str) -> list[Dataset]:
    """The result objects of ``kind``, written to bytes and read back."""
    return [
        pydicom.dcmread(io.BytesIO(result.to_bytes())) for result in results if result.kind == kind
    ]


@pytest.fixture(scope="module")
def ct_case() -> tuple[Volume, ModelOutput, list[ResultObject]]:
    volume = ct_volume()
    output = ct_output(volume)
    return volume, output, build_result_datasets(output, volume, ALGORITHM)


@pytest.fixture(scope="module")
def ct_sr(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> hd.sr.Comprehensive3DSR:
    """The CT case's SR, written to bytes and parsed by highdicom once (parsing is slow)."""
    [report] = [result for result in ct_case[2] if result.kind == "sr"]
    return read_sr(report.to_bytes())


def read_sr(data: bytes) -> hd.sr.Comprehensive3DSR:
    document = hd.sr.srread(io.BytesIO(data))
    assert isinstance(document, hd.sr.Comprehensive3DSR)
    assert isinstance(document.content, hd.sr.MeasurementReport)
    return document


def report_of(document: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    """The TID 1500 content of ``document`` (typed for highdicom's accessors)."""
    content = document.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


# --- Segmentation ---------------------------------------------------------------


def test_seg_frames_lie_on_their_source_images_and_reassemble_the_masks(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> None:
    volume, output, results = ct_case
    [raw] = by_kind(results, "seg")
    seg = hd.seg.Segmentation.from_dataset(raw)
    assert raw.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert seg.SegmentationType == "BINARY"

    # Each frame references exactly the source slice whose plane it lies in.
    position_of = {
        str(h.SOPInstanceUID): [float(v) for v in h.ImagePositionPatient] for h in volume.datasets
    }
    for item in seg.PerFrameFunctionalGroupsSequence:
        [derivation] = item.DerivationImageSequence
        [source] = derivation.SourceImageSequence
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == position_of[source.ReferencedSOPInstanceUID]

    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.sop_instance_uid for s in volume.sources],
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    expected = np.stack([segment.mask for segment in output.segments], axis=-1)
    np.testing.assert_array_equal(pixels.astype(bool), expected)

    # Empty frames are omitted: one frame per (slice, segment) with any voxel set.
    non_empty = sum(int(s.mask[i].any()) for s in output.segments for i in range(10))
    assert int(seg.NumberOfFrames) == non_empty < 2 * 10


def test_seg_describes_each_segment_and_its_algorithm(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> None:
    volume, _, results = ct_case
    [seg] = by_kind(results, "seg")
    first, second = seg.SegmentSequence
    assert (first.SegmentNumber, first.SegmentLabel) == (1, "Left lung")
    assert (second.SegmentNumber, second.SegmentLabel) == (2, "Nodule")
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == NODULE.value
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    [algorithm] = first.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ct-lung", "1.2.0")
    assert first.RecommendedDisplayCIELabValue != second.RecommendedDisplayCIELabValue
    _assert_result_series(seg, volume, "SEG")


def enhanced_ct_volume(slices: int = 6, size: int = 16) -> Volume:
    """One multi-frame (legacy converted enhanced CT) instance whose frames run head
    to foot, the opposite of the volume's slice order."""
    single = ct_volume(slices, size)
    legacy = []
    for header in reversed(single.datasets):
        frame = Dataset(header)
        frame.file_meta = pydicom.dataset.FileMetaDataset()
        frame.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        frame.PixelData = np.zeros((size, size), np.uint16).tobytes()
        frame.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        frame.KVP = 120
        frame.RescaleIntercept, frame.RescaleSlope, frame.RescaleType = -1024, 1, "HU"
        frame.ContentDate, frame.ContentTime = "20240315", "101500"
        frame.SeriesDate, frame.SeriesTime = "20240315", "101500"
        frame.AcquisitionNumber = 1
        legacy.append(frame)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(legacy, hd.UID(), 4, hd.UID(), 1)
    del enhanced.PixelData
    z_of_frame = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in enhanced.PerFrameFunctionalGroupsSequence
    ]
    order = sorted(range(slices), key=lambda frame: z_of_frame[frame])
    sources = [
        SourceFrame(str(enhanced.SOPInstanceUID), str(enhanced.SOPClassUID), frame + 1)
        for frame in order
    ]
    return replace(
        single,
        series_instance_uid=str(enhanced.SeriesInstanceUID),
        sources=sources,
        datasets=[enhanced],
    )


def test_seg_of_a_multi_frame_source_follows_its_frame_numbers() -> None:
    volume = enhanced_ct_volume()
    assert [s.frame_number for s in volume.sources] == [6, 5, 4, 3, 2, 1]
    mask = box(volume.shape, slice(0, 2), slice(2, 9), slice(3, 12))
    output = ModelOutput(
        segments=[Segment("Lesion", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NODULE, mask)],
        measurements=[Measurement(VOLUME_CODE, 1.0, MILLILITRE, segment_number=1)],
    )
    results = build_result_datasets(output, volume, ALGORITHM)
    [raw] = by_kind(results, "seg")
    seg = hd.seg.Segmentation.from_dataset(raw)
    frames = sorted(
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    )
    assert frames == [5, 6]  # slices 0 and 1 are the last two frames of the source
    pixels = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=volume.sources[0].sop_instance_uid,
        source_frame_numbers=[s.frame_number or 0 for s in volume.sources],
        segment_numbers=[1],
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask)
    [report] = by_kind(results, "sr")
    [group] = report_of(read_sr(to_part10_bytes(report))).get_volumetric_roi_measurement_groups()
    assert group.referenced_segment is not None
    [source] = group.referenced_segment.source_images_for_segmentation
    assert list(source.referenced_frame_numbers or []) == [5, 6]


# --- Structured report ------------------------------------------------------------


def test_sr_names_the_algorithm_as_a_device_observer(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
    ct_sr: hd.sr.Comprehensive3DSR,
) -> None:
    volume, _, results = ct_case
    [raw] = by_kind(results, "sr")
    sr = ct_sr
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    [observer] = report_of(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    device = observer.observer_identifying_attributes
    assert isinstance(device, hd.sr.DeviceObserverIdentifyingAttributes)
    assert device.uid == ALGORITHM.device_uid()
    assert device.name == "ct-lung 1.2.0"
    assert device.manufacturer_name == "OpenVNA"
    assert device.model_name == "ct-lung"
    assert device.serial_number == ALGORITHM.artifact_sha256
    assert not report_of(sr).get_observer_contexts(observer_type=codes.DCM.Person)
    assert _procedures(raw) == ["77477000"]  # SCT computerized axial tomography
    _assert_result_series(raw, volume, "SR")


def test_sr_segment_groups_reference_the_seg_and_carry_measurements(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
    ct_sr: hd.sr.Comprehensive3DSR,
) -> None:
    volume, output, results = ct_case
    [seg] = by_kind(results, "seg")
    sr = ct_sr
    groups = {
        group.tracking_identifier: group
        for group in report_of(sr).get_volumetric_roi_measurement_groups()
    }
    assert set(groups) == {"Segment 1: Left lung", "Segment 2: Nodule", "Finding 1: Nodule"}

    lung = groups["Segment 1: Left lung"]
    reference = lung.referenced_segment
    assert isinstance(reference, hd.sr.ReferencedSegment)
    assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert reference.referenced_segment_numbers == [1]
    assert lung.tracking_uid == seg.SegmentSequence[0].TrackingUID
    # A volume's segment names its source series; the SEG's frames name the images.
    assert not reference.has_source_images()
    assert reference.source_series_for_segmentation.value == volume.series_instance_uid
    measured = {
        m.name.value: (m.value, m.unit.value, m.unit.scheme_designator)
        for m in lung.get_measurements()
    }
    assert measured == {
        "118565006": (1234.5, "ml", "UCUM"),
        "112031": (-862.0, "[hnsf'U]", "UCUM"),
    }
    [volume_measurement] = lung.get_measurements(
        name=hd.sr.CodedConcept("118565006", "SCT", "Volume")
    )
    assert _algorithm(volume_measurement[0]) == ("ct-lung", "1.2.0")
    [site] = volume_measurement.finding_sites
    assert site.value.value == LUNG.value

    nodule_finding = groups["Finding 1: Nodule"]
    assert nodule_finding.referenced_segment is not None
    assert nodule_finding.referenced_segment.referenced_segment_numbers == [2]
    [evaluation] = nodule_finding.get_qualitative_evaluations()
    assert _evaluation(evaluation) == (NODULE.value, "52101004")  # Present
    [probability] = nodule_finding.get_measurements()
    assert _algorithm(probability[0]) == ("ct-lung", "1.2.0")
    assert (probability.name.value, probability.value, probability.unit.value) == (
        "122157",
        0.87,
        "1",
    )
    assert output.findings[0].probability == 0.87


def test_sr_reports_unattached_results_against_the_source_series(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
    ct_sr: hd.sr.Comprehensive3DSR,
) -> None:
    _, _, results = ct_case
    [raw] = by_kind(results, "sr")
    sr = ct_sr
    groups = {g.tracking_identifier: g for g in report_of(sr).get_image_measurement_groups()}
    assert set(groups) == {"Finding 2: Pneumothorax", "Series measurements"}

    absent = groups["Finding 2: Pneumothorax"]
    assert absent.finding_type is None  # an absent finding is not "the finding"
    [evaluation] = absent.get_qualitative_evaluations()
    assert _evaluation(evaluation) == (PNEUMOTHORAX.value, "272519000")  # Absent

    series = groups["Series measurements"]
    measured = {m.name.value: (m.value, m.unit.value) for m in series.get_measurements()}
    assert measured == {"EMPH-INDEX": (7.5, "%"), "TRIAGE-PRIORITY": (0.8, "1")}
    # A volume's instances are named once, in the evidence, not in every group.
    assert series.source_images == []
    schemes = {item.CodingSchemeDesignator for item in raw.CodingSchemeIdentificationSequence}
    assert "99OPENVNA" in schemes


def test_sr_evidence_and_image_library_list_sources_and_seg(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> None:
    volume, _, results = ct_case
    [seg] = by_kind(results, "seg")
    [sr] = by_kind(results, "sr")
    evidence = {
        instance.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    sources = {s.sop_instance_uid for s in volume.sources}
    assert evidence == sources | {seg.SOPInstanceUID}
    [library] = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
    ]
    listed = {
        entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    }
    assert listed == {volume.sources[0].sop_instance_uid}  # one entry describes the series


def test_dsrdump_reads_the_report_without_errors(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]], tmp_path: pytest.TempPathFactory
) -> None:
    """DCMTK's own SR parser checks the document against the SR IOD and TID rules."""
    dsrdump = require_tool("dsrdump")
    _, _, results = ct_case
    [report] = [result for result in results if result.kind == "sr"]
    path = tmp_path / "report.dcm"  # type: ignore[operator]
    path.write_bytes(report.to_bytes())
    completed = subprocess.run(
        [dsrdump, "--verbose", str(path)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "E:" not in completed.stderr and "error" not in completed.stderr.lower()
    assert "ct-lung 1.2.0" in completed.stdout


# --- Identity, series and encoding -------------------------------------------------


def _evaluation(evaluation: hd.sr.QualitativeEvaluation) -> tuple[str, str]:
    """(concept name code, coded value) of a TID 1501 qualitative evaluation."""
    item = evaluation[0]
    return (
        str(item.ConceptNameCodeSequence[0].CodeValue),
        str(item.ConceptCodeSequence[0].CodeValue),
    )


def _algorithm(item: Dataset) -> tuple[str, str]:
    """(Algorithm Name, Algorithm Version) of TID 4019 below a content item."""
    [name] = find_content_items(item, name=codes.DCM.AlgorithmName, recursive=True)
    [version] = find_content_items(item, name=codes.DCM.AlgorithmVersion, recursive=True)
    return str(name.TextValue), str(version.TextValue)


def _procedures(report: Dataset) -> list[str]:
    """Procedure Reported (TID 1500 row 3) codes of an SR."""
    return [
        str(item.ConceptCodeSequence[0].CodeValue)
        for item in report.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ProcedureReported.value
    ]


def _assert_result_series(dataset: Dataset, volume: Volume, modality: str) -> None:
    assert dataset.Modality == modality
    assert dataset.StudyInstanceUID == volume.study_instance_uid
    assert dataset.SeriesInstanceUID != volume.series_instance_uid
    assert dataset.PatientID == "SYN-0042"
    assert dataset.SeriesDescription == "AI ct-lung 1.2.0"
    assert dataset.Manufacturer == "OpenVNA"
    assert dataset.ManufacturerModelName == "ct-lung"
    assert dataset.SoftwareVersions == "1.2.0"
    assert len(dataset.InstanceCreationDate) == 8 and dataset.InstanceCreationTime


def test_each_kind_has_its_own_series_and_uids_are_stable_per_job(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> None:
    volume, output, results = ct_case
    assert [r.kind for r in results] == ["seg", "sr"]
    assert len({r.series_instance_uid for r in results}) == 2
    assert [int(r.dataset.SeriesNumber) for r in results] == [9000, 9001]

    again = build_result_datasets(output, volume, ALGORITHM)
    assert [r.sop_instance_uid for r in again] == [r.sop_instance_uid for r in results]
    other_job = build_result_datasets(
        output, volume, replace(ALGORITHM, job_uid="2.25.999"), series_number=42
    )
    assert not {r.sop_instance_uid for r in other_job} & {r.sop_instance_uid for r in results}
    assert [int(r.dataset.SeriesNumber) for r in other_job] == [42, 43]


def test_part10_bytes_have_preamble_meta_and_explicit_vr_little_endian(
    ct_case: tuple[Volume, ModelOutput, list[ResultObject]],
) -> None:
    _, _, results = ct_case
    for result in results:
        data = to_part10_bytes(result.dataset)
        assert data[:128] == bytes(128) and data[128:132] == b"DICM"
        read = pydicom.dcmread(io.BytesIO(data))
        assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert read.file_meta.MediaStorageSOPInstanceUID == result.sop_instance_uid
        assert read.file_meta.MediaStorageSOPClassUID == result.sop_class_uid


def test_nothing_to_record_gives_no_objects() -> None:
    assert build_result_datasets(ModelOutput(), ct_volume(), ALGORITHM) == []


# --- Projection images: finding and secondary capture -----------------------------


def test_dx_finding_and_secondary_capture() -> None:
    volume = dx_volume()
    rng = np.random.default_rng(7)
    overlay = rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(48, 40), dtype=np.uint8)
    output = ModelOutput(
        findings=[Finding(PNEUMOTHORAX, True, probability=0.91)],
        derived_images=[
            DerivedImage("Heat map", overlay, source_slice=0),
            DerivedImage("Key image", grey),
        ],
        priority=0.95,
    )
    results = build_result_datasets(output, volume, ALGORITHM, series_number=500)
    assert [r.kind for r in results] == ["sr", "sc", "sc"]

    [report] = by_kind(results, "sr")
    sr = read_sr(to_part10_bytes(report))
    assert report.StudyInstanceUID == volume.study_instance_uid
    [finding, _] = report_of(sr).get_image_measurement_groups()
    [evaluation] = finding.get_qualitative_evaluations()
    assert _evaluation(evaluation) == (PNEUMOTHORAX.value, "52101004")
    assert finding.finding_type is not None
    assert finding.finding_type.value == PNEUMOTHORAX.value
    [probability] = finding.get_measurements()
    assert probability.value == 0.91
    [image] = finding.source_images
    assert image.referenced_sop_instance_uid == volume.sources[0].sop_instance_uid
    assert _procedures(report) == ["363680008"]  # SCT radiographic imaging procedure

    heat, key = by_kind(results, "sc")
    assert heat.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert heat.SeriesInstanceUID == key.SeriesInstanceUID != report.SeriesInstanceUID
    assert (heat.InstanceNumber, key.InstanceNumber) == (1, 2)
    assert heat.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(heat.pixel_array, overlay)
    np.testing.assert_array_equal(key.pixel_array, grey)
    assert key.PhotometricInterpretation == "MONOCHROME2"
    [source] = heat.SourceImageSequence
    assert source.ReferencedSOPInstanceUID == volume.sources[0].sop_instance_uid
    assert "SourceImageSequence" not in key
    assert list(heat.PatientOrientation) == ["P", "F"]
    assert list(heat.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert heat.ImageComments == "Heat map"
    _assert_result_series(heat, volume, "OT")


def test_secondary_capture_of_a_ct_slice_takes_orientation_from_geometry() -> None:
    volume = ct_volume(slices=4)
    image = DerivedImage("Slice 2", np.full((32, 32), 200, dtype=np.uint8), source_slice=2)
    [capture] = by_kind(
        build_result_datasets(ModelOutput(derived_images=[image]), volume, ALGORITHM), "sc"
    )
    assert list(capture.PatientOrientation) == ["L", "P"]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        volume.sources[2].sop_instance_uid
    )


# --- Parametric maps ----------------------------------------------------------------


def test_parametric_map_keeps_float_values_on_the_source_frames() -> None:
    volume = ct_volume(slices=5, size=16)
    values = np.random.default_rng(3).random(volume.shape, dtype=np.float32)
    output = ModelOutput(
        derived_images=[DerivedImage("Probability map", values, kind="parametric-map")]
    )
    [result] = build_result_datasets(output, volume, ALGORITHM)
    assert result.kind == "pm"
    parametric_map = pydicom.dcmread(io.BytesIO(result.to_bytes()))
    assert parametric_map.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    frames = parametric_map.pixel_array
    for index, item in enumerate(parametric_map.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        slice_index = [s.sop_instance_uid for s in volume.sources].index(
            source.ReferencedSOPInstanceUID
        )
        np.testing.assert_array_equal(frames[index], values[slice_index])
    assert parametric_map.StudyInstanceUID == volume.study_instance_uid
    assert int(parametric_map.SeriesNumber) == 9003


def test_parametric_map_not_in_native_geometry_is_unsupported() -> None:
    volume = ct_volume(slices=5, size=16)
    resampled = DerivedImage("Map", np.zeros((5, 8, 8), np.float32), kind="parametric-map")
    with pytest.raises(UnsupportedResultError, match="shape"):
        build_result_datasets(ModelOutput(derived_images=[resampled]), volume, ALGORITHM)


# --- Refusals ---------------------------------------------------------------------


def test_mask_of_the_wrong_shape_is_refused() -> None:
    volume = ct_volume(slices=4)
    wrong = Segment("Lung", ANATOMICAL_STRUCTURE, LUNG, np.ones((3, 32, 32), dtype=np.bool_))
    with pytest.raises(ResultEncodingError, match="shape"):
        build_result_datasets(ModelOutput(segments=[wrong]), volume, ALGORITHM)


def test_headers_that_do_not_match_the_slices_are_refused() -> None:
    volume = ct_volume(slices=4)
    volume.datasets = volume.datasets[:3]
    mask = np.ones(volume.shape, dtype=np.bool_)
    with pytest.raises(ResultEncodingError, match="source headers"):
        build_result_datasets(
            ModelOutput(segments=[Segment("Lung", ANATOMICAL_STRUCTURE, LUNG, mask)]),
            volume,
            ALGORITHM,
        )


def test_secondary_capture_needs_8_bit_pixels() -> None:
    image = DerivedImage("Float", np.zeros((32, 32), dtype=np.float32), source_slice=0)
    with pytest.raises(ResultEncodingError, match="uint8"):
        build_result_datasets(ModelOutput(derived_images=[image]), ct_volume(2), ALGORITHM)
