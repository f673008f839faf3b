"""Derived images of kind ``parametric-map`` as Parametric Map objects (PS3.3 A.75).

A parametric map keeps the model's floating-point values (a probability map, a density
map) with a Real World Value Mapping, where a secondary capture would flatten them to
8-bit pixels. Its frames lie on the source images exactly as a SEG's do, so only maps in
native geometry are accepted: a 3D map of the volume's shape, or a 2D map of one source
slice (``source_slice``, or the only slice of a 2D volume). Anything else raises
:class:`UnsupportedResultError`; the model should resample to the native grid or return
a secondary capture.

The values are unitless (UCUM ``1``): :class:`DerivedImage` carries no unit.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.uid import ExplicitVRLittleEndian

from openvna.ai.inputs import Volume
from openvna.ai.outputs import DerivedImage
from openvna.ai.results.codes import NO_UNITS, coded
from openvna.ai.results.errors import ResultEncodingError, UnsupportedResultError
from openvna.ai.results.frames import FrameLayout, frame_layout
from openvna.ai.results.identity import AlgorithmIdentity, stamp_creation
from openvna.ai.results.seg import content_label


def build_parametric_map(
    image: DerivedImage,
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    series_number: int,
    instance_number: int,
    created: datetime,
) -> hd.pm.ParametricMap:
    """The parametric map of one derived image.

    Raises
    ------
    UnsupportedResultError
        When the map is not in the native geometry of the volume.
    ResultEncodingError
        When its values are not finite or highdicom rejects it.
    """
    layout, frames = _frames(image, volume)
    if not np.all(np.isfinite(frames)):
        raise ResultEncodingError(f"parametric map {image.label!r} has non-finite values")
    low, high = float(frames.min()), float(frames.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=content_label(image.label),
        lut_explanation=image.label[:64],
        unit=coded(NO_UNITS),
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
    )
    try:
        parametric_map = hd.pm.ParametricMap(
            source_images=layout.source_images,
            pixel_array=frames,
            series_instance_uid=algorithm.uid("pm", "series"),
            series_number=series_number,
            sop_instance_uid=algorithm.uid("pm", "instance", instance_number),
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            device_serial_number=algorithm.artifact_sha256 or "unrecorded",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(
                    window_center=(low + high) / 2.0, window_width=max(high - low, 1e-6)
                )
            ],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            content_label=content_label(algorithm.name),
            content_description=f"{algorithm.series_description}: {image.label}"[:64],
            series_description=algorithm.series_description,
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ResultEncodingError(
            f"highdicom refused the parametric map {image.label!r}: {error}"
        ) from error
    stamp_creation(parametric_map, created)
    return parametric_map


def _frames(image: DerivedImage, volume: Volume) -> tuple[FrameLayout, npt.NDArray[np.float32]]:
    """The source images the map lies on and its pixels in their frame order."""
    pixels = np.asarray(image.pixels, dtype=np.float32)
    slices, rows, columns = volume.shape
    layout = frame_layout(volume)
    if pixels.shape == (slices, rows, columns):
        frames = np.zeros((layout.frame_count, rows, columns), dtype=np.float32)
        frames[np.asarray(layout.frame_of_slice)] = pixels
        return layout, frames
    if pixels.shape != (rows, columns):
        raise UnsupportedResultError(
            f"parametric map {image.label!r} has shape {pixels.shape}; only the volume's "
            f"{volume.shape} or one slice's {(rows, columns)} can be encoded"
        )
    index = image.source_slice if image.source_slice is not None else 0
    if image.source_slice is None and slices != 1:
        raise UnsupportedResultError(
            f"2D parametric map {image.label!r} of a {slices}-slice volume needs source_slice"
        )
    if not 0 <= index < slices:
        raise ResultEncodingError(f"parametric map {image.label!r} names slice {index}")
    if layout.frame_count != slices or len(layout.source_images) != slices:
        raise UnsupportedResultError(
            f"2D parametric map {image.label!r} of one frame of a multi-frame image"
        )
    single = replace(
        layout, source_images=[layout.source_images[index]], frame_count=1, frame_of_slice=[0]
    )
    return single, pixels[np.newaxis]
