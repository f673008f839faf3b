"""Volume assembly: slice order, spacing and values of synthetic series, the problems
that must be reported instead of processed, and the same through a real archive."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from openvna.ai.errors import InconsistentSeriesError
from openvna.ai.json_dataset import dataset_from_json
from openvna.ai.volume import (
    assemble_each_image,
    assemble_from_datasets,
    assemble_series,
)
from openvna.archive.dicomjson import dataset_to_json
from openvna.archive.events import EventBus
from openvna.archive.ingest import Origin
from openvna.archive.service import Archive
from openvna.config import load_settings
from openvna.errors import NotFoundError
from openvna.index.database import create_index_engine, upgrade_schema
from openvna.storage.filesystem import FilesystemStorage
from openvna.tasks.inprocess import InProcessExecutor

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.1.9"
ROWS, COLUMNS = 64, 48  # JPEG 2000 needs 32+ pixels per side for its resolution levels
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SEED = 20240604
MPEG2 = UID("1.2.840.10008.1.2.4.100")
"""MPEG2 Main Profile / Main Level: no decoder for it is installed."""


def stored_values(index: int) -> npt.NDArray[np.int16]:
    """Distinct stored values per slice and pixel, so any misordering shows."""
    rows, columns = np.mgrid[0:ROWS, 0:COLUMNS]
    values: npt.NDArray[np.int16] = (index * 100 + rows * 3 + columns - 40).astype(np.int16)
    return values


def _base(sop_uid: str, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "VOLUME^TEST"
    ds.PatientID = "VOL001"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def ct_slice(
    index: int,
    position: Sequence[float],
    *,
    orientation: Sequence[float] = AXIAL,
    slope: float = 1.0,
    intercept: float = -1024.0,
    frame_of_reference: str = FRAME_OF_REFERENCE,
    rows: int = ROWS,
) -> Dataset:
    ds = _base(f"{SERIES}.{index + 1}", CTImageStorage, "CT")
    ds.InstanceNumber = index + 1
    ds.FrameOfReferenceUID = frame_of_reference
    ds.ImagePositionPatient = [f"{value:.6g}" for value in position]
    ds.ImageOrientationPatient = [f"{value:.6g}" for value in orientation]
    ds.PixelSpacing = ["0.7", "0.8"]
    ds.SliceThickness = "1.25"
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    pixels = stored_values(index)
    if rows != ROWS:
        ds.Rows = rows
        pixels = np.zeros((rows, COLUMNS), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def ct_series(
    count: int = 8,
    *,
    spacing: float = 2.5,
    orientation: Sequence[float] = AXIAL,
    positions: Sequence[Sequence[float]] | None = None,
    slope: float = 1.0,
) -> list[Dataset]:
    """Slice ``i`` lies at ``origin + i * spacing * normal``."""
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-10.0, 20.0, 30.0])
    if positions is None:
        positions = [tuple(origin + i * spacing * normal) for i in range(count)]
    return [
        ct_slice(i, position, orientation=orientation, slope=slope)
        for i, position in enumerate(positions)
    ]


def shuffled(datasets: list[Dataset]) -> list[Dataset]:
    order = np.random.default_rng(SEED).permutation(len(datasets))
    return [datasets[i] for i in order]


def expected_hu(
    index: int, slope: float = 1.0, intercept: float = -1024.0
) -> npt.NDArray[np.float32]:
    return (stored_values(index).astype(np.float32) * slope + intercept).astype(np.float32)


# -- order, spacing, values -------------------------------------------------------------


def test_shuffled_arrival_is_ordered_along_the_normal_with_hu_values() -> None:
    datasets = ct_series(8, slope=2.0)
    volume = assemble_from_datasets(shuffled(datasets))
    assert volume.shape == (8, ROWS, COLUMNS)
    assert [source.sop_instance_uid for source in volume.sources] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    for index in range(8):
        np.testing.assert_array_equal(volume.voxels[index], expected_hu(index, slope=2.0))
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert volume.origin == pytest.approx((-10.0, 20.0, 30.0))
    assert volume.orientation == AXIAL
    assert volume.voxels.dtype == np.float32
    assert not volume.is_2d and volume.rescaled and volume.warnings == []
    assert [ds.SOPInstanceUID for ds in volume.datasets] == [ds.SOPInstanceUID for ds in datasets]
    assert all("PixelData" not in ds for ds in volume.datasets)
    assert all("PixelData" in ds for ds in datasets), "the caller's datasets are untouched"
    assert (volume.study_instance_uid, volume.series_instance_uid) == (STUDY, SERIES)
    assert (volume.modality, volume.frame_of_reference_uid) == ("CT", FRAME_OF_REFERENCE)


def test_rescale_false_keeps_stored_values() -> None:
    volume = assemble_from_datasets(ct_series(3, slope=2.0), rescale=False)
    assert not volume.rescaled
    np.testing.assert_array_equal(volume.voxels[1], stored_values(1).astype(np.float32))


def test_reversed_normal_orders_slices_along_it_not_along_z() -> None:
    """Rows running towards the feet flip the normal to -z: slice 0 is the highest z."""
    flipped = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    positions = [(0.0, 0.0, 10.0 + 3.0 * i) for i in range(5)]
    datasets = [ct_slice(i, p, orientation=flipped) for i, p in enumerate(positions)]
    volume = assemble_from_datasets(shuffled(datasets))
    assert volume.normal == pytest.approx((0.0, 0.0, -1.0))
    assert [s.sop_instance_uid for s in volume.sources] == [
        ds.SOPInstanceUID for ds in reversed(datasets)
    ]
    assert volume.origin == pytest.approx((0.0, 0.0, 22.0))
    assert volume.spacing[0] == pytest.approx(3.0)
    np.testing.assert_array_equal(volume.voxels[0], expected_hu(4))
    # The affine takes slice index 4 back to the lowest slice.
    corner = volume.affine() @ np.array([0.0, 0.0, 4.0, 1.0])
    assert corner[:3] == pytest.approx((0.0, 0.0, 10.0))


def test_oblique_stack_uses_its_own_normal() -> None:
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    oblique = (1.0, 0.0, 0.0, 0.0, c, -s)
    volume = assemble_from_datasets(shuffled(ct_series(6, spacing=1.5, orientation=oblique)))
    assert volume.spacing[0] == pytest.approx(1.5, abs=1e-4)
    assert volume.sources[0].sop_instance_uid.endswith(".1")


def test_slightly_uneven_spacing_is_a_warning_and_the_mean_is_used() -> None:
    z = [0.0, 2.5, 5.0, 7.6, 10.0, 12.5]
    volume = assemble_from_datasets(ct_series(positions=[(0.0, 0.0, v) for v in z]))
    assert volume.spacing[0] == pytest.approx(2.5)
    assert len(volume.warnings) == 1 and "slice spacing varies" in volume.warnings[0]


# -- problems reported, never processed -------------------------------------------------


def test_missing_slice_is_reported() -> None:
    datasets = ct_series(10)
    del datasets[6]
    with pytest.raises(InconsistentSeriesError, match=r"slices are missing.*about 1 slice"):
        assemble_from_datasets(shuffled(datasets))


def test_tilted_gantry_stack_is_reported() -> None:
    """Positions advance in z and drift in y (15 degree tilt): a sheared stack."""
    tilt = np.tan(np.radians(15))
    positions = [(0.0, 5.0 * i * tilt, 5.0 * i) for i in range(6)]
    with pytest.raises(InconsistentSeriesError, match=r"sheared by about 15\.0 degrees"):
        assemble_from_datasets(ct_series(positions=positions))


def test_mixed_orientation_is_reported() -> None:
    datasets = ct_series(5)
    datasets.append(ct_slice(5, (0.0, 0.0, 0.0), orientation=(0, 1, 0, 0, 0, -1)))
    with pytest.raises(InconsistentSeriesError, match="mixes image orientations"):
        assemble_from_datasets(datasets)


def test_mixed_sizes_are_reported() -> None:
    datasets = ct_series(4)
    datasets.append(ct_slice(9, (-10.0, 20.0, 40.0), rows=20))
    with pytest.raises(InconsistentSeriesError, match="mixes image sizes"):
        assemble_from_datasets(datasets)


def test_mixed_frames_of_reference_are_reported() -> None:
    datasets = ct_series(4)
    datasets[2].FrameOfReferenceUID = "1.2.3.4"
    with pytest.raises(InconsistentSeriesError, match="mixes Frames of Reference"):
        assemble_from_datasets(datasets)


def test_duplicate_positions_are_reported() -> None:
    positions = [(0.0, 0.0, 2.0 * i) for i in range(4)] + [(0.0, 0.0, 4.0)]
    with pytest.raises(InconsistentSeriesError, match="occur twice"):
        assemble_from_datasets(ct_series(positions=positions))


def test_missing_geometry_on_a_stack_is_reported() -> None:
    datasets = ct_series(4)
    del datasets[1].ImagePositionPatient
    with pytest.raises(InconsistentSeriesError, match="1 of 4 frames lack Image Position"):
        assemble_from_datasets(datasets)


def test_undecodable_pixels_are_reported() -> None:
    ds = ct_slice(0, (0.0, 0.0, 0.0))
    ds.file_meta.TransferSyntaxUID = MPEG2  # MPEG2: no decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    with pytest.raises(InconsistentSeriesError, match=r"MPEG2.*cannot be decoded"):
        assemble_from_datasets([ds])


def test_colour_images_are_reported() -> None:
    ds = ct_slice(0, (0.0, 0.0, 0.0))
    ds.SamplesPerPixel = 3
    with pytest.raises(InconsistentSeriesError, match="colour"):
        assemble_from_datasets([ds])


# -- multi-frame, compressed, projection ------------------------------------------------


def enhanced_ct(count: int = 6, spacing: float = 2.0) -> tuple[Dataset, list[int]]:
    """An Enhanced CT image whose frames are stored in shuffled z order; returns it and,
    per frame, the slice index it should land on."""
    ds = _base(f"{SERIES}.100", EnhancedCTImageStorage, "CT")
    ds.NumberOfFrames = count
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.PixelRepresentation = 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ["0.5", "0.6"]
    measures.SliceThickness = "2"
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    transformation = Dataset()
    transformation.RescaleSlope = "1"
    transformation.RescaleIntercept = "-1000"
    transformation.RescaleType = "HU"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transformation]
    ds.SharedFunctionalGroupsSequence = [shared]
    slice_of_frame = [int(i) for i in np.random.default_rng(SEED).permutation(count)]
    per_frame = []
    for slice_index in slice_of_frame:
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, -50.0 + spacing * slice_index]
        group = Dataset()
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack([stored_values(i) for i in slice_of_frame]).tobytes()
    return ds, slice_of_frame


def test_enhanced_multi_frame_ct_frames_are_ordered_with_frame_numbers() -> None:
    ds, slice_of_frame = enhanced_ct()
    volume = assemble_from_datasets([ds])
    assert volume.shape == (6, ROWS, COLUMNS)
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.6))
    assert volume.origin == pytest.approx((0.0, 0.0, -50.0))
    for frame_index, slice_index in enumerate(slice_of_frame):
        assert volume.sources[slice_index].frame_number == frame_index + 1
        np.testing.assert_array_equal(
            volume.voxels[slice_index], expected_hu(slice_index, intercept=-1000.0)
        )
    assert len(volume.datasets) == 1 and "PixelData" not in volume.datasets[0]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decodes_to_the_same_values(syntax: str) -> None:
    datasets = ct_series(5)
    for ds in datasets:
        ds.compress(syntax)
    volume = assemble_from_datasets(shuffled(datasets))
    for index in range(5):
        np.testing.assert_array_equal(volume.voxels[index], expected_hu(index))


def dx_image(number: int = 1) -> Dataset:
    ds = _base(f"{SERIES}.{200 + number}", DigitalXRayImageStorageForPresentation, "DX")
    ds.InstanceNumber = number
    ds.ImagerPixelSpacing = ["0.15", "0.14"]
    ds.PixelRepresentation = 0
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PhotometricInterpretation = "MONOCHROME1"
    values = stored_values(number).astype(np.uint16) + 100
    values[0, 0] |= 0xF000  # bits above High Bit are not part of the value (PS3.5 8.1.1)
    ds.PixelData = values.tobytes()
    return ds


def dx_expected(number: int = 1) -> npt.NDArray[np.float32]:
    return ((stored_values(number).astype(np.uint16) + 100) & 0x0FFF).astype(np.float32)


def test_projection_image_is_a_2d_volume_with_imager_spacing() -> None:
    volume = assemble_from_datasets([dx_image()])
    assert volume.is_2d and volume.shape == (1, ROWS, COLUMNS)
    assert volume.spacing == pytest.approx((0.0, 0.15, 0.14))
    assert volume.orientation == AXIAL and volume.origin == (0.0, 0.0, 0.0)
    assert volume.voxel_volume_ml == 0.0
    assert volume.sources[0].frame_number is None
    np.testing.assert_array_equal(volume.voxels[0], dx_expected())


def test_several_projection_images_are_not_a_volume() -> None:
    with pytest.raises(InconsistentSeriesError, match="analysed one at a time"):
        assemble_from_datasets([dx_image(1), dx_image(2)])


# -- DICOM JSON headers -----------------------------------------------------------------


def test_dataset_from_json_equals_pydicom_from_json() -> None:
    ds, _ = enhanced_ct(3)
    ds.ReferringPhysicianName = "DOE^JANE=Doe^Jane"
    ds.FrameIncrementPointer = 0x00181063
    ds.WindowCenter = ["40", "-600"]
    header = dataset_to_json(ds)
    del header["7FE00010"]
    fast = dataset_from_json(header)
    assert fast == Dataset.from_json(header)
    assert (
        fast.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
        == (ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0])
    )


# -- through a real archive -------------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    """The archive core on a fresh SQLite index and file storage (as ``open_archive``)."""
    settings = load_settings(None, data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    engine = create_index_engine(settings.index_url, sqlite_synchronous="OFF")
    upgrade_schema(engine)
    executor = InProcessExecutor()
    core = Archive(settings, engine, FilesystemStorage(settings.storage_dir), EventBus(executor))
    yield core
    executor.shutdown()
    core.close()


def ingest(archive: Archive, datasets: Sequence[Dataset]) -> None:
    for ds in datasets:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        buffer.seek(0)
        archive.ingest_file(buffer, origin=Origin("test"))


def test_stored_series_mixing_native_and_rle_matches_the_in_memory_assembly(
    archive: Archive,
) -> None:
    datasets = ct_series(9, slope=2.0)
    for ds in datasets[::2]:
        ds.compress(RLELossless)
    ingest(archive, shuffled(datasets))
    volume = assemble_series(archive, SERIES)
    for index in range(9):
        np.testing.assert_array_equal(volume.voxels[index], expected_hu(index, slope=2.0))
    reference = assemble_from_datasets(datasets)
    np.testing.assert_array_equal(volume.voxels, reference.voxels)
    assert (volume.spacing, volume.origin) == (reference.spacing, reference.origin)
    assert volume.sources == reference.sources
    first = volume.datasets[0]
    assert (first.PatientID, first.StudyInstanceUID, first.FrameOfReferenceUID) == (
        "VOL001",
        STUDY,
        FRAME_OF_REFERENCE,
    )
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx([-10.0, 20.0, 30.0])
    assert "PixelData" not in first
    assert first.file_meta.TransferSyntaxUID == RLELossless  # slice 0 was compressed


def test_stored_enhanced_ct_in_jpeg_2000(archive: Archive) -> None:
    ds, slice_of_frame = enhanced_ct()
    ds.compress(JPEG2000Lossless)
    ingest(archive, [ds])
    volume = assemble_series(archive, SERIES)
    for frame_index, slice_index in enumerate(slice_of_frame):
        assert volume.sources[slice_index].frame_number == frame_index + 1
        np.testing.assert_array_equal(
            volume.voxels[slice_index], expected_hu(slice_index, intercept=-1000.0)
        )
    functional_groups = volume.datasets[0].SharedFunctionalGroupsSequence[0]
    assert functional_groups.PixelMeasuresSequence[0].PixelSpacing == [0.5, 0.6]


def test_stored_undecodable_syntax_is_reported(archive: Archive) -> None:
    ds = ct_slice(0, (0.0, 0.0, 0.0))
    ds.file_meta.TransferSyntaxUID = MPEG2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ingest(archive, [ds])
    with pytest.raises(InconsistentSeriesError, match="MPEG2 Main Profile"):
        assemble_series(archive, SERIES)


def test_stored_projection_series_is_assembled_image_by_image(archive: Archive) -> None:
    ingest(archive, [dx_image(2), dx_image(1)])
    with pytest.raises(InconsistentSeriesError, match="one at a time"):
        assemble_series(archive, SERIES)
    volumes = assemble_each_image(archive, SERIES)
    assert [v.sources[0].sop_instance_uid for v in volumes] == [f"{SERIES}.201", f"{SERIES}.202"]
    np.testing.assert_array_equal(volumes[0].voxels[0], dx_expected(1))
    assert volumes[1].is_2d and volumes[1].spacing == pytest.approx((0.0, 0.15, 0.14))
    only = assemble_series(archive, SERIES, sop_instance_uids=[f"{SERIES}.202"])
    np.testing.assert_array_equal(only.voxels[0], dx_expected(2))


def test_unknown_series_is_not_found(archive: Archive) -> None:
    with pytest.raises(NotFoundError):
        assemble_series(archive, "1.2.3.999")
