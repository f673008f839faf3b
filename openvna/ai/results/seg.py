"""Segments of a model output as a DICOM Segmentation (PS3.3 A.51, C.8.20).

The SEG is BINARY and uncompressed (Explicit VR Little Endian): the form every OHIF 3.x
release displays. Its frames are aligned with the source images rather than resampled,
because masks are defined on the native volume: frame ``k`` of a single-frame series is
derived from ``volume.datasets[k]`` (highdicom writes the Derivation Image Sequence and
the plane position of each frame from that header); for a multi-frame source the mask
of slice ``i`` goes to frame ``sources[i].frame_number`` and highdicom takes the plane
positions from the source's Per-Frame Functional Groups. Empty frames are omitted to
keep the object small.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.uid import ExplicitVRLittleEndian

from openvna.ai.inputs import Volume
from openvna.ai.outputs import Segment
from openvna.ai.results.codes import ARTIFICIAL_INTELLIGENCE, coded, private_schemes
from openvna.ai.results.errors import ResultEncodingError
from openvna.ai.results.frames import FrameLayout, frame_layout
from openvna.ai.results.identity import AlgorithmIdentity, stamp_creation

_PALETTE: Final = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
)
"""Display colours (RGB) cycled over segments so adjacent labels stay distinguishable."""


def build_segmentation(
    segments: list[Segment],
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    series_number: int,
    created: datetime,
) -> hd.seg.Segmentation:
    """One BINARY SEG holding every segment; segment ``k`` is ``segments[k - 1]``.

    Raises
    ------
    ResultEncodingError
        When there are no segments, a mask's shape differs from the volume's or the
        source headers do not match the slices.
    """
    if not segments:
        raise ResultEncodingError("a segmentation needs at least one segment")
    layout = frame_layout(volume)
    pixel_array = _pixel_array(segments, volume, layout)
    descriptions = [
        _describe(number, segment, algorithm) for number, segment in enumerate(segments, start=1)
    ]
    try:
        segmentation = hd.seg.Segmentation(
            source_images=layout.source_images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=algorithm.uid("seg", "series"),
            series_number=series_number,
            sop_instance_uid=algorithm.uid("seg", "instance"),
            instance_number=1,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number=algorithm.artifact_sha256 or "unrecorded",
            content_description=algorithm.series_description,
            content_label=content_label(algorithm.name),
            content_creator_name=algorithm.content_creator_name(),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=True,
            series_description=algorithm.series_description,
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
            coding_schemes=private_schemes(
                code for segment in segments for code in (segment.category, segment.type)
            ),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ResultEncodingError(f"highdicom refused the segmentation: {error}") from error
    stamp_creation(segmentation, created)
    return segmentation


def content_label(name: str) -> str:
    """Content Label (0070,0080): a CS of at most 16 upper-case characters."""
    label = re.sub(r"[^A-Z0-9_ ]", "_", name.upper())[:16].strip()
    return label or "AI"


def _pixel_array(
    segments: list[Segment], volume: Volume, layout: FrameLayout
) -> npt.NDArray[np.bool_]:
    slices, rows, columns = volume.shape
    header = layout.source_images[0]
    if (int(header.Rows), int(header.Columns)) != (rows, columns):
        raise ResultEncodingError(
            f"the volume's slices are {rows}x{columns}, the source images "
            f"{header.Rows}x{header.Columns}: masks must be in native geometry"
        )
    pixels = np.zeros((layout.frame_count, rows, columns, len(segments)), dtype=np.bool_)
    frames = np.asarray(layout.frame_of_slice)
    for index, segment in enumerate(segments):
        mask = np.asarray(segment.mask)
        if mask.shape != (slices, rows, columns):
            raise ResultEncodingError(
                f"mask of segment {segment.label!r} has shape {mask.shape}, "
                f"the volume {volume.shape}"
            )
        pixels[frames, :, :, index] = mask.astype(np.bool_)
    return pixels


def _describe(
    number: int, segment: Segment, algorithm: AlgorithmIdentity
) -> hd.seg.SegmentDescription:
    red, green, blue = _PALETTE[(number - 1) % len(_PALETTE)]
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label[:64],
        segmented_property_category=coded(segment.category),
        segmented_property_type=coded(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            family=ARTIFICIAL_INTELLIGENCE,
            version=algorithm.version,
            source=algorithm.manufacturer,
        ),
        tracking_uid=segment_tracking_uid(algorithm, number),
        tracking_id=segment.label[:64],
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )
    if segment.description:
        description.SegmentDescription = segment.description[:64]
    return description


def segment_tracking_uid(algorithm: AlgorithmIdentity, number: int) -> str:
    """Tracking UID of segment ``number``: shared by the SEG and the SR measurement
    group about it, so a viewer can follow the region from one object to the other."""
    return algorithm.uid("segment", number)
