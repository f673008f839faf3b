"""Which series a model runs on: its manifest's input selection against the index.

Everything here reads the index only (ARCHITECTURE.md property 5): deciding that a
300-slice CT goes to the lung model costs one query, not 300 file opens. A series that
an AI run produced is never an input, so results cannot trigger models in a loop.
"""

from __future__ import annotations

import re
from functools import cache

from openvna.ai.manifest import ModelManifest
from openvna.index.ai_repository import SeriesCandidate

_IMAGE_STORAGE_EXCLUDED = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports
    "1.2.840.10008.5.1.4.1.1.66.",  # segmentation, registration, surfaces
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (plans, structures, doses)
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
)
"""Storage SOP classes without an image a model could read (prefixes, PS3.6 Annex A)."""


def mismatch(manifest: ModelManifest, candidate: SeriesCandidate) -> str | None:
    """Why ``candidate`` is not an input of ``manifest`` (None: it is)."""
    selection = manifest.input
    if candidate.is_ai_output:
        return "series holds AI results"
    if selection.modalities and candidate.modality.upper() not in selection.modalities:
        return f"modality {candidate.modality or '(none)'} not in {selection.modalities}"
    if selection.body_parts and candidate.body_part_examined.upper() not in selection.body_parts:
        return f"body part {candidate.body_part_examined or '(none)'} not in {selection.body_parts}"
    if selection.sop_classes:
        if not candidate.sop_class_uids <= set(selection.sop_classes):
            return "SOP classes of the series are not among the manifest's"
    elif not any(_is_image_class(uid) for uid in candidate.sop_class_uids):
        return "series holds no images"
    if selection.series_description is not None and not _pattern(
        selection.series_description
    ).search(candidate.series_description):
        return f"series description {candidate.series_description!r} does not match"
    if candidate.number_of_instances < selection.min_instances:
        return f"{candidate.number_of_instances} instances, fewer than {selection.min_instances}"
    if selection.max_instances is not None and (
        candidate.number_of_instances > selection.max_instances
    ):
        return f"{candidate.number_of_instances} instances, more than {selection.max_instances}"
    if selection.require_decodable:
        undecodable = sorted(uid for uid in candidate.transfer_syntax_uids if not decodable(uid))
        if undecodable:
            return f"transfer syntax {', '.join(undecodable)} cannot be decoded here"
    return None


def _is_image_class(sop_class_uid: str) -> bool:
    return sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.") and not sop_class_uid.startswith(
        _IMAGE_STORAGE_EXCLUDED
    )


@cache
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression, re.IGNORECASE)


@cache
def decodable(transfer_syntax_uid: str) -> bool:
    """Whether pydicom, with the codecs installed here, can decode this syntax."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return bool(get_decoder(transfer_syntax_uid).is_available)
    except (NotImplementedError, ValueError):
        return False
