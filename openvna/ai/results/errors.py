"""Why a model's output could not be written back as DICOM or FHIR.

Both are permanent for the job: the same output fails the same way on a retry, so the
orchestrator reports the reason instead of retrying.
"""

from __future__ import annotations

from openvna.ai.errors import AiError


class ResultEncodingError(AiError):
    """The output does not fit the source volume it claims to describe (a mask whose
    frames do not match the source images, a derived image of the wrong pixel type) or
    a result object failed highdicom's validation."""


class UnsupportedResultError(ResultEncodingError):
    """The output is valid but this archive cannot encode it yet (for example a
    parametric map over a source whose geometry highdicom cannot describe)."""
