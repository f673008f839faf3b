"""De-identification of a model's input before it leaves the archive.

A ``kserve`` model runs on another server, possibly another organisation's. When its
manifest keeps ``runtime.deidentify = true`` (the default) the runner calls
:func:`deidentify_input` first, so the headers an adapter could copy into a request no
longer identify the patient.

This is a deliberately small *hook*: it applies the Remove (X) and Zero-length (Z)
actions of the PS3.15 Annex E Basic Application Level Confidentiality Profile (Table
E.1-1) to the attributes that name or locate a patient, a clinician or an institution,
and removes private attributes. It does not replace UIDs (U), shift dates, or clean
burned-in pixel annotations; the privacy issue replaces it with the full profile behind
the same signature.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Final

from pydicom import Dataset
from pydicom.dataelem import DataElement

from openvna.ai.inputs import ModelInput, Volume

BLANKED: Final[frozenset[str]] = frozenset(
    {
        # PS3.15 Table E.1-1 action Z (type 2: kept, emptied)
        "AccessionNumber",
        "ContentCreatorName",
        "ContentDate",
        "ContentTime",
        "PatientBirthDate",
        "PatientID",
        "PatientName",
        "PatientSex",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyID",
        "StudyTime",
    }
)
"""Attributes emptied: type 2 in most IODs, so they stay present with no value."""

REMOVED: Final[frozenset[str]] = frozenset(
    {
        # PS3.15 Table E.1-1 action X (or X/Z/D resolved to X)
        "AcquisitionDate",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "AdditionalPatientHistory",
        "AdmittingDiagnosesDescription",
        "BranchOfService",
        "CountryOfResidence",
        "DeviceSerialNumber",
        "EthnicGroup",
        "ImageComments",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "InstitutionAddress",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "IssuerOfPatientID",
        "MedicalRecordLocator",
        "MilitaryRank",
        "NameOfPhysiciansReadingStudy",
        "Occupation",
        "OperatorsName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientAge",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientMotherBirthName",
        "PatientSize",
        "PatientTelephoneNumbers",
        "PatientWeight",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "ReferencedPatientSequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "RequestAttributesSequence",
        "RequestingPhysician",
        "SeriesDate",
        "SeriesTime",
        "StationName",
        "StudyComments",
    }
)
"""Attributes removed, with private attributes (odd groups), wherever they are nested."""

METHOD: Final = "OpenVNA basic hook: PS3.15 E.1-1 X/Z subset, UIDs kept"


def deidentify_dataset(dataset: Dataset) -> Dataset:
    """A copy of ``dataset`` with the identifying attributes removed or emptied, at every
    nesting level, and Patient Identity Removed (0012,0062) set to ``YES``."""
    clean = copy.deepcopy(dataset)

    def scrub(parent: Dataset, element: DataElement) -> None:
        if element.tag.is_private or element.keyword in REMOVED:
            del parent[element.tag]
        elif element.keyword in BLANKED:
            element.value = None

    clean.walk(scrub)
    clean.PatientIdentityRemoved = "YES"
    clean.DeidentificationMethod = METHOD
    return clean


def deidentify_volume(volume: Volume) -> Volume:
    """The same volume (voxels shared, not copied) with de-identified headers."""
    return dataclasses.replace(
        volume, datasets=[deidentify_dataset(dataset) for dataset in volume.datasets]
    )


def deidentify_input(model_input: ModelInput) -> ModelInput:
    """A copy of ``model_input`` whose volumes' headers no longer identify the patient;
    the original is left untouched (the archive still needs it to write results)."""
    native = model_input.native
    return dataclasses.replace(
        model_input,
        volume=deidentify_volume(model_input.volume),
        native=deidentify_volume(native) if native is not None else None,
    )
