"""AI results written back as standard objects (issue #4 item 5).

A validated :class:`~openvna.ai.outputs.ModelOutput` and the native volume it describes
become DICOM objects in the source study, each in its own series:

* a BINARY Segmentation of the segments (:mod:`.seg`),
* a Comprehensive 3D SR with a TID 1500 Measurement Report of findings, measurements
  and the priority score, referencing the SEG's segments (:mod:`.sr`),
* Secondary Capture images and Parametric Maps of derived images (:mod:`.capture`,
  :mod:`.parametric`),

and a FHIR R4 DiagnosticReport bundle (:mod:`.fhir`) for the EHR. The orchestrator
hands :meth:`ResultObject.to_bytes` to the archive's one ingest path.
"""

from openvna.ai.results.build import (
    ResultKind,
    ResultObject,
    build_result_datasets,
    to_part10_bytes,
)
from openvna.ai.results.errors import ResultEncodingError, UnsupportedResultError
from openvna.ai.results.fhir import diagnostic_report
from openvna.ai.results.identity import AlgorithmIdentity

__all__ = [
    "AlgorithmIdentity",
    "ResultEncodingError",
    "ResultKind",
    "ResultObject",
    "UnsupportedResultError",
    "build_result_datasets",
    "diagnostic_report",
    "to_part10_bytes",
]
