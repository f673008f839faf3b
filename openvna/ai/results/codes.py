"""Coded concepts the result writers use, and the translation of model codes.

Models speak :class:`openvna.ai.outputs.Code`; highdicom wants ``CodedConcept``. The
few concepts OpenVNA adds itself come from the standard where one fits:

* presence of a finding: SCT 52101004 "Present" / SCT 272519000 "Absent" (CID 240);
* probability of a finding: DCM 122157 "Probability", unit UCUM ``1`` "no units";
* the procedure reported (TID 1500 row 3): the imaging procedure of the source modality
  (SCT 77477000 computed tomography, ...), SCT 363679005 "Imaging procedure" otherwise.

The triage priority score has no standard concept (SCT 260870009 "Priority" is an
attribute, not a 0..1 score), so it uses the private coding scheme ``99OPENVNA``
(PS3.16 8.2: private schemes start with ``99``), declared in the Coding Scheme
Identification Sequence of every object that uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import highdicom as hd
from pydicom.sr.codedict import codes

from openvna.ai.outputs import Code

PRIVATE_SCHEME: Final = "99OPENVNA"
PRIORITY_SCORE: Final = Code("TRIAGE-PRIORITY", PRIVATE_SCHEME, "AI triage priority score")
"""0 (routine) .. 1 (most urgent), unit ``1``; see :attr:`ModelOutput.priority`."""
PROBABILITY: Final = Code("122157", "DCM", "Probability")
NO_UNITS: Final = Code("1", "UCUM", "no units")
PRESENT: Final = Code("52101004", "SCT", "Present")
ABSENT: Final = Code("272519000", "SCT", "Absent")
IMAGING_PROCEDURE: Final = Code("363679005", "SCT", "Imaging procedure")

_PROCEDURE_BY_MODALITY: Final[dict[str, Code]] = {
    "CT": Code("77477000", "SCT", "Computerized axial tomography"),
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
    "PT": Code("82918005", "SCT", "Positron emission tomography"),
    "CR": Code("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": Code("363680008", "SCT", "Radiographic imaging procedure"),
    "MG": Code("71651007", "SCT", "Mammography"),
    "US": Code("16310003", "SCT", "Diagnostic ultrasonography"),
}


def coded(code: Code) -> hd.sr.CodedConcept:
    """The highdicom concept of a model code (PS3.3 8.8 Code Sequence Macro)."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def procedure_for(modality: str) -> Code:
    """Procedure Reported (TID 1500 row 3) for a source series of ``modality``."""
    return _PROCEDURE_BY_MODALITY.get(modality.upper(), IMAGING_PROCEDURE)


def private_schemes(
    used: Iterable[Code | None],
) -> list[hd.coding_schemes.CodingSchemeIdentificationItem] | None:
    """Coding Scheme Identification Sequence items (PS3.3 C.12.1.1.1) for the private
    schemes (designator ``99...``) among ``used``; None when there are none. Standard
    schemes need no declaration."""
    designators = sorted(
        {code.scheme for code in used if code is not None and code.scheme.startswith("99")}
    )
    items = [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=designator,
            name="OpenVNA private codes" if designator == PRIVATE_SCHEME else designator,
            responsible_organization="OpenVNA" if designator == PRIVATE_SCHEME else None,
        )
        for designator in designators
    ]
    return items or None


ARTIFICIAL_INTELLIGENCE: Final = codes.DCM.ArtificialIntelligence
"""Algorithm Family (CID 7162) of every OpenVNA model: DCM 123110."""
