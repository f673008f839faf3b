"""How the slices of a volume map onto the frames of the images they came from.

Result objects whose frames lie on the source images (SEG, parametric map) are built
from the source headers, one frame per source frame: frame ``k`` of a single-frame
series is ``volume.datasets[k]``; a multi-frame source keeps its own frame order and
slice ``i`` goes to frame ``sources[i].frame_number``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from openvna.ai.inputs import Volume
from openvna.ai.results.errors import ResultEncodingError


@dataclass(frozen=True)
class FrameLayout:
    """How the slices of a volume map onto the frames of its source image(s)."""

    source_images: list[Dataset]
    frame_count: int
    frame_of_slice: list[int]
    """0-based frame of the SEG pixel array that slice ``i`` of the volume becomes."""


def frame_layout(volume: Volume) -> FrameLayout:
    """Match slices to source frames, refusing a volume whose headers do not describe
    its slices (a SEG that referenced the wrong image would mislead a reader)."""
    slices = volume.shape[0]
    if len(volume.sources) != slices:
        raise ResultEncodingError(
            f"the volume has {slices} slices but {len(volume.sources)} source references"
        )
    multi_frame = [source.frame_number is not None for source in volume.sources]
    if not any(multi_frame):
        if len(volume.datasets) != slices:
            raise ResultEncodingError(
                f"the volume has {slices} slices but {len(volume.datasets)} source headers"
            )
        for index, (source, header) in enumerate(zip(volume.sources, volume.datasets, strict=True)):
            if str(header.SOPInstanceUID) != source.sop_instance_uid:
                raise ResultEncodingError(f"slice {index}: source header and reference differ")
        return FrameLayout(list(volume.datasets), slices, list(range(slices)))
    if not all(multi_frame) or len(volume.datasets) != 1:
        raise ResultEncodingError(
            "a volume mixing frames of several multi-frame instances cannot be segmented"
        )
    header = volume.datasets[0]
    frame_count = int(header.get("NumberOfFrames", 1))
    frame_of_slice: list[int] = []
    for source in volume.sources:
        assert source.frame_number is not None
        if source.sop_instance_uid != str(header.SOPInstanceUID):
            raise ResultEncodingError("slice references an instance other than its header")
        if not 1 <= source.frame_number <= frame_count:
            raise ResultEncodingError(
                f"frame {source.frame_number} outside the source's {frame_count} frames"
            )
        frame_of_slice.append(source.frame_number - 1)
    return FrameLayout([header], frame_count, frame_of_slice)
