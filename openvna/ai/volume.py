"""Input assembly: one stored series as an ordered, rescaled volume for a model.

:func:`assemble_series` builds the :class:`~openvna.ai.inputs.Volume` of a series in
the archive without parsing a single file: the headers come from the index (the DICOM
JSON kept at ingest, one query for the whole series), the pixel bytes from
:class:`~openvna.archive.pixels.PixelStore`, which reads native frames with one
positioned read at the recorded Pixel Data offset and hands compressed frames to
pydicom's decoders. :func:`assemble_from_datasets` does the same for pydicom Datasets
in memory (tests, files on disk, models developed outside the archive), and both share
the geometry checks of :mod:`openvna.ai.geometry`.

Values are stored values times Rescale Slope plus Rescale Intercept (PS3.3 C.11.1.1.2;
Hounsfield units for CT), per frame, as float32; with ``rescale=False`` the stored
values are kept. A Modality LUT Sequence is not applied (a warning says so), nor is
MONOCHROME1 inverted: the values are what the modality measured, not how it is shown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from openvna.ai.errors import InconsistentSeriesError
from openvna.ai.geometry import (
    PROJECTION_MODALITIES,
    FramePlane,
    frame_planes,
    order_stack,
    single_frame_plane,
)
from openvna.ai.inputs import SourceFrame, Volume
from openvna.ai.json_dataset import dataset_from_json
from openvna.archive.frame_codec import can_decode, decode_frame
from openvna.archive.pixels import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    FrameGeometry,
    PixelStore,
    StoredImage,
)
from openvna.archive.service import Archive
from openvna.errors import NotFoundError, OpenVNAError
from openvna.index.pixels import PixelSource
from openvna.index.series_headers import find_series_sources

FrameReader = Callable[[Sequence[int]], list[npt.NDArray[np.generic]]]
"""Stored values of the given 1-based frames of one instance, each (rows, columns)."""

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float Pixel Data, Double Float Pixel Data, Pixel Data."""

_MULTI_VALUED = frozenset(
    {"ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "ImagerPixelSpacing"}
)

READ_THREADS = min(8, max(1, (os.cpu_count() or 1) // 2))
"""Instances read and decoded at once, besides the thread building header Datasets:
positioned reads, NumPy arithmetic and the codecs release the GIL. Half the CPUs: on a
small, busy machine more threads only contend (2 CPUs: 1 reader measured fastest)."""


@dataclass
class SourceImage:
    """One instance as assembly needs it: identity, frame geometry, pixel reader and a
    way to build its header Dataset (deferred: it is built while the pixels are read)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    samples_per_pixel: int
    multi_frame: bool
    has_modality_lut: bool
    planes: list[FramePlane]
    read: FrameReader
    header: Callable[[], Dataset]
    """The header without Pixel Data (the result writers' source image)."""

    @classmethod
    def from_attributes(
        cls,
        get: Callable[[str], Any],
        planes: list[FramePlane],
        read: FrameReader,
        header: Callable[[], Dataset],
    ) -> SourceImage:
        """``get(keyword)`` answers as ``Dataset.get``."""
        return cls(
            sop_instance_uid=str(get("SOPInstanceUID") or ""),
            sop_class_uid=str(get("SOPClassUID") or ""),
            study_instance_uid=str(get("StudyInstanceUID") or ""),
            series_instance_uid=str(get("SeriesInstanceUID") or ""),
            modality=str(get("Modality") or "").upper(),
            samples_per_pixel=int(get("SamplesPerPixel") or 1),
            multi_frame=get("NumberOfFrames") is not None,
            has_modality_lut=get("ModalityLUTSequence") is not None,
            planes=planes,
            read=read,
            header=header,
        )


# -- from the archive -----------------------------------------------------------------


def assemble_series(
    archive: Archive,
    series_instance_uid: str,
    *,
    rescale: bool = True,
    sop_instance_uids: Collection[str] | None = None,
) -> Volume:
    """The volume of a stored series (latest instance versions), slice 0 first along
    the normal; ``sop_instance_uids`` restricts it to those instances.

    Raises
    ------
    NotFoundError
        No such series, or none of ``sop_instance_uids`` in it.
    InconsistentSeriesError
        The instances do not form one volume (see :func:`openvna.ai.geometry.order_stack`),
        are colour, or are stored in a transfer syntax that cannot be decoded here.
    """
    images = series_images(archive, series_instance_uid, sop_instance_uids)
    return assemble_images(images, rescale=rescale)


def assemble_each_image(
    archive: Archive, series_instance_uid: str, *, rescale: bool = True
) -> list[Volume]:
    """One volume per instance of the series, in Instance Number order: the input of
    image-level models (CR, DX, MG: every image a 2D problem of its own)."""
    images = series_images(archive, series_instance_uid)
    return [assemble_images([image], rescale=rescale) for image in images]


def series_images(
    archive: Archive,
    series_instance_uid: str,
    sop_instance_uids: Collection[str] | None = None,
) -> list[SourceImage]:
    """The image instances of a stored series, headers decoded from the index."""
    sources = find_series_sources(archive.engine, series_instance_uid)
    if sop_instance_uids is not None:
        wanted = set(sop_instance_uids)
        sources = [source for source in sources if source.sop_instance_uid in wanted]
        if not sources:
            raise NotFoundError(
                f"none of the requested instances is in series {series_instance_uid}"
            )
    undecodable = sorted(
        {source.transfer_syntax_uid for source in sources if not _decodable(source)}
    )
    if undecodable:
        names = ", ".join(f"{uid} ({UID(uid).name})" for uid in undecodable)
        raise InconsistentSeriesError(
            f"series {series_instance_uid} has instances in transfer syntax {names}, "
            "which this archive cannot decode"
        )
    return [_stored_image(archive.pixels, source) for source in sources]


def _decodable(source: PixelSource) -> bool:
    return source.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN or can_decode(
        source.transfer_syntax_uid
    )


def _stored_image(pixels: PixelStore, source: PixelSource) -> SourceImage:
    header = json.loads(source.dicom_json)
    get = _json_getter(header)
    built: list[Dataset] = []

    def dataset() -> Dataset:
        if not built:
            header_dataset = dataset_from_json(header)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID(str(header_dataset.get("SOPClassUID", "")))
            meta.MediaStorageSOPInstanceUID = UID(source.sop_instance_uid)
            meta.TransferSyntaxUID = UID(source.transfer_syntax_uid)
            header_dataset.file_meta = meta
            built.append(header_dataset)
        return built[0]

    # Multi-frame geometry lives in nested functional groups: read from the Dataset.
    planes = frame_planes(dataset()) if "00280008" in header else [single_frame_plane(get)]
    if "00280010" not in header:
        return SourceImage.from_attributes(
            get, planes, _no_pixels(source.sop_instance_uid), dataset
        )
    image = pixels.image(source)

    def read(numbers: Sequence[int]) -> list[npt.NDArray[np.generic]]:
        try:
            frames = pixels.read_frames(image, numbers)
            return [_frame_values(frame, image) for frame in frames]
        except OpenVNAError as error:
            raise InconsistentSeriesError(
                f"pixels of instance {source.sop_instance_uid} cannot be read: {error}"
            ) from error

    return SourceImage.from_attributes(get, planes, read, dataset)


def _json_getter(header: dict[str, Any]) -> Callable[[str], Any]:
    """``Dataset.get`` over a DICOM JSON header, for the top-level attributes that
    identify an image and give its plane: the value of a single-valued element, the
    list of a multi-valued one, None when absent or empty."""

    def get(keyword: str) -> Any:
        tag = tag_for_keyword(keyword)
        entry = header.get(f"{tag:08X}") if tag is not None else None
        if entry is None:
            return None
        values = entry.get("Value")
        if not values:
            return None
        if entry.get("vr") == "SQ" or keyword in _MULTI_VALUED:
            return values
        return values[0]

    return get


def _no_pixels(sop_instance_uid: str) -> FrameReader:
    def read(numbers: Sequence[int]) -> list[npt.NDArray[np.generic]]:
        raise InconsistentSeriesError(f"instance {sop_instance_uid} is not an image")

    return read


def _frame_values(frame: bytes, image: StoredImage) -> npt.NDArray[np.generic]:
    """Stored values of one frame as :meth:`PixelStore.read_frames` returns it."""
    geometry = image.geometry
    if image.is_native and geometry.bits_allocated in (8, 16, 32):
        return _native_values(frame, geometry)
    return decode_frame(frame, image.stored_frame_syntax, geometry, as_rgb=False)


def _native_values(frame: bytes, geometry: FrameGeometry) -> npt.NDArray[np.generic]:
    """Native little-endian frame bytes as values: Bits Stored honoured, PS3.5 8.1.1
    (bits above High Bit are not part of the value; signed values are sign-extended)."""
    allocated, stored = geometry.bits_allocated, geometry.bits_stored
    signed = geometry.pixel_representation == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    values = np.frombuffer(frame, dtype=dtype).reshape(geometry.rows, geometry.columns)
    if 0 < stored < allocated:
        shift = allocated - stored
        values = (values << shift) >> shift if signed else values & ((1 << stored) - 1)
    return values


# -- from datasets in memory ----------------------------------------------------------


def assemble_from_datasets(datasets: Sequence[Dataset], *, rescale: bool = True) -> Volume:
    """The volume of pydicom Datasets with Pixel Data (one series), as
    :func:`assemble_series` builds it from the archive. Each dataset's pixels are
    decoded once (``pixel_array``).

    Raises
    ------
    InconsistentSeriesError
        As :func:`assemble_series`; also when the datasets are of several series.
    """
    series_uids = {str(dataset.get("SeriesInstanceUID", "")) for dataset in datasets}
    if len(series_uids) > 1:
        raise InconsistentSeriesError(
            f"the datasets belong to {len(series_uids)} series, a volume to one"
        )
    return assemble_images([_memory_image(dataset) for dataset in datasets], rescale=rescale)


def _memory_image(dataset: Dataset) -> SourceImage:
    # A new Dataset over the same elements, less the pixels (Dataset.copy shares the
    # element mapping, so deleting from a copy would delete from the caller's dataset).
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        element.tag: element for element in dataset if element.tag not in _PIXEL_TAGS
    }
    header = Dataset(elements)
    if hasattr(dataset, "file_meta"):
        header.file_meta = dataset.file_meta
    uid = str(dataset.get("SOPInstanceUID", ""))

    def read(numbers: Sequence[int]) -> list[npt.NDArray[np.generic]]:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "")
        try:
            array = dataset.pixel_array
        except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
            name = UID(str(syntax)).name if syntax else "unknown transfer syntax"
            raise InconsistentSeriesError(
                f"pixels of instance {uid} ({name}) cannot be decoded here: {error}"
            ) from error
        if "NumberOfFrames" not in dataset or array.ndim == 2:
            return [array]
        return [array[number - 1] for number in numbers]

    return SourceImage.from_attributes(dataset.get, frame_planes(dataset), read, lambda: header)


# -- shared ---------------------------------------------------------------------------


def assemble_images(images: Sequence[SourceImage], *, rescale: bool = True) -> Volume:
    """Order, check and read the frames of ``images`` (one series) into a volume."""
    if not images:
        raise InconsistentSeriesError("the series holds no instance")
    first = images[0]
    colour = [image.sop_instance_uid for image in images if image.samples_per_pixel != 1]
    if colour:
        raise InconsistentSeriesError(
            f"{len(colour)} instance(s) are colour images (Samples per Pixel > 1): a volume "
            "holds one value per voxel"
        )
    frames: list[tuple[int, int | None, FramePlane]] = []
    labels: list[str] = []
    for index, image in enumerate(images):
        for number, plane in enumerate(image.planes, start=1):
            frame_number = number if image.multi_frame else None
            frames.append((index, frame_number, plane))
            label = image.sop_instance_uid
            labels.append(f"{label} frame {number}" if frame_number else label)
    stack = order_stack(
        [plane for _, _, plane in frames],
        labels,
        projection=first.modality in PROJECTION_MODALITIES,
    )
    rows, columns = frames[0][2].rows, frames[0][2].columns
    voxels = np.empty((len(stack.order), rows, columns), dtype=np.float32)
    wanted: dict[int, list[tuple[int, int, FramePlane]]] = {}
    for slice_index, frame_index in enumerate(stack.order):
        image_index, frame_number, plane = frames[frame_index]
        wanted.setdefault(image_index, []).append((slice_index, frame_number or 1, plane))

    def fill(image_index: int) -> None:
        targets = wanted[image_index]
        values = images[image_index].read([number for _, number, _ in targets])
        for (slice_index, _, plane), array in zip(targets, values, strict=True):
            if array.shape != (rows, columns):
                raise InconsistentSeriesError(
                    f"instance {images[image_index].sop_instance_uid} decodes to "
                    f"{array.shape}, its header says {rows}x{columns}"
                )
            _store(voxels[slice_index], array, plane, rescale)

    ordered_images = list(dict.fromkeys(frames[i][0] for i in stack.order))
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(wanted))) as pool:
        reads = [pool.submit(fill, image_index) for image_index in wanted]
        # Header Datasets are pure Python (GIL-bound); built here while the pool's reads
        # and arithmetic, which release the GIL, run.
        datasets = [images[i].header() for i in ordered_images]
        for read in reads:
            read.result()

    warnings = list(stack.warnings)
    if rescale and any(image.has_modality_lut for image in images):
        warnings.append("a Modality LUT Sequence is present and was not applied")
    return Volume(
        voxels=voxels,
        spacing=stack.spacing,
        origin=stack.origin,
        orientation=stack.orientation,
        study_instance_uid=first.study_instance_uid,
        series_instance_uid=first.series_instance_uid,
        modality=first.modality,
        frame_of_reference_uid=frames[0][2].frame_of_reference_uid,
        sources=[
            SourceFrame(
                sop_instance_uid=images[frames[i][0]].sop_instance_uid,
                sop_class_uid=images[frames[i][0]].sop_class_uid,
                frame_number=frames[i][1],
            )
            for i in stack.order
        ],
        datasets=datasets,
        is_2d=stack.is_2d,
        rescaled=rescale,
        warnings=warnings,
    )


def _store(
    target: npt.NDArray[np.float32],
    values: npt.NDArray[np.generic],
    plane: FramePlane,
    rescale: bool,
) -> None:
    """``target`` = values x slope + intercept, in place: one pass over the slice for the
    common slope of 1 (no float64 temporary either way)."""
    if not rescale:
        target[...] = values
    elif plane.slope == 1.0:
        np.add(values, np.float32(plane.intercept), out=target, casting="unsafe")
    else:
        np.multiply(values, np.float32(plane.slope), out=target, casting="unsafe")
        if plane.intercept != 0.0:
            target += np.float32(plane.intercept)
