"""Why an AI job did not complete, each with whether retrying could help.

The orchestrator retries a job only when its error is ``transient``: a model that raised
or timed out may succeed on the next attempt (memory pressure, a remote server
restarting), while an inconsistent series or a malformed output will fail the same way
again and ends the job at once with its reason.
"""

from __future__ import annotations


class AiError(Exception):
    """Base of every AI orchestration error; ``transient`` says whether to retry."""

    transient = False


class ManifestError(AiError):
    """A model manifest is missing, unreadable or invalid."""


class InconsistentSeriesError(AiError):
    """The series cannot be assembled into a trustworthy volume (mixed orientations,
    missing slices, gantry tilt, undecodable pixels); reported, never processed."""


class ModelFailedError(AiError):
    """The model itself raised an exception."""

    transient = True


class ModelTimeoutError(AiError):
    """The model did not finish within its manifest's ``timeout_seconds``."""

    transient = True


class MalformedOutputError(AiError):
    """The model returned something that is not a valid :class:`ModelOutput` for its
    input (wrong mask shape, probability outside 0..1, undeclared output kind)."""


class RemoteInferenceError(AiError):
    """A remote inference server (KServe v2) could not be reached or answered an error."""

    transient = True


class ModelStoppedError(AiError):
    """The model (or all AI) was stopped by the stop switch while the job waited or ran."""
