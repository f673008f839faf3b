"""The ``python`` runtime: the model is a function ``(ModelInput) -> ModelOutput``.

The function runs in the job's own worker; whatever it raises becomes a
:class:`~openvna.ai.errors.ModelFailedError` carrying the exception's type and message
(and the exception itself as ``__cause__``) so the job's failure reason reads like the
model's own error, and the orchestrator may retry it. Errors that are already
classified (:class:`~openvna.ai.errors.AiError`) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from openvna.ai.errors import AiError, ModelFailedError
from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import ModelOutput


@contextmanager
def model_failures(stage: str = "") -> Iterator[None]:
    """Turn any exception raised inside the block into :class:`ModelFailedError`.

    ``stage`` (``"adapter.to_tensors"``, ``"inference"``) prefixes the message so a
    reader knows which half of a tensor model failed.
    """
    try:
        yield
    except AiError:
        raise
    except Exception as error:
        prefix = f"{stage}: " if stage else ""
        raise ModelFailedError(f"{prefix}{type(error).__name__}: {error}") from error


class PythonRunner:
    """Calls a Python model function; built by :func:`openvna.ai.runners.factory.build_runner`."""

    def __init__(self, function: Callable[[ModelInput], object]) -> None:
        self._function = function

    def run(self, model_input: ModelInput) -> ModelOutput:
        """Call the model. What it returns is checked afterwards by
        :func:`~openvna.ai.outputs.validate_output`, not here."""
        with model_failures():
            result = self._function(model_input)
        return cast(ModelOutput, result)
