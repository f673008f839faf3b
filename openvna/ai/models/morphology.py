"""Morphology shared by the reference models: per-slice labelling and hole filling."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage  # type: ignore[import-untyped, unused-ignore]

BoolArray = npt.NDArray[np.bool_]
LabelArray = npt.NDArray[np.int32]

IN_PLANE: Final = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)
"""4-connectivity within a slice only: labels each slice's components in one call."""


def border_labels(labels: LabelArray) -> npt.NDArray[np.int32]:
    """Labels present on the in-plane border of any slice."""
    edges = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    return np.unique(np.concatenate([edge.ravel() for edge in edges]))


def fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """Fill, in each slice, background regions not connected to the slice border.

    Labelling the background once with in-plane connectivity is much faster than
    ``binary_fill_holes`` slice by slice on 512x512 images. Works on the bounding box
    of the mask enlarged by one voxel, so the border of the box is background.
    """
    present = np.nonzero(mask)
    if present[0].size == 0:
        return mask
    margin = (0, 1, 1)
    box = tuple(
        slice(max(int(axis.min()) - pad, 0), int(axis.max()) + 1 + pad)
        for axis, pad in zip(present, margin, strict=True)
    )
    part = mask[box]
    background, count = ndimage.label(~part, structure=IN_PLANE)
    open_ = np.zeros(count + 1, dtype=bool)
    open_[border_labels(background)] = True
    filled = mask.copy()
    filled[box] = part | ~open_[background]
    return filled
