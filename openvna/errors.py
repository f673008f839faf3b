"""One exception hierarchy; each type carries the DICOM and HTTP status it maps to.

Adapters translate these in one place each (CONVENTIONS.md): DIMSE answers
``dicom_status`` with ``str(error)`` as the Error Comment, HTTP answers ``http_status``.
Status values come from PS3.4 Annex B.2.3 (Storage), C.4 (Query/Retrieve) and PS3.7 C.
"""

from __future__ import annotations


class OpenVNAError(Exception):
    """Base of every error OpenVNA raises on purpose."""

    dicom_status: int = 0xC000  # Failure: unable to process
    http_status: int = 500


class InvalidInstanceError(OpenVNAError):
    """The bytes are not a DICOM instance we can accept (malformed, not DICOM)."""

    dicom_status = 0xC000  # Error: cannot understand
    http_status = 400


class MissingAttributeError(InvalidInstanceError):
    """A required UID or attribute is absent or malformed."""

    dicom_status = 0xA900  # Error: data set does not match SOP class
    http_status = 400


class StudyMismatchError(MissingAttributeError):
    """The data set's StudyInstanceUID is not the study the request was addressed to.

    STOW-RS ``POST /studies/{study}`` (PS3.18 10.5.1) stores only instances of that
    study. PS3.18 I.2.2 has no Failure Reason for it and allows others; 0xC409 is what
    dcm4chee answers, so clients that know one archive's code understand ours.
    """

    dicom_status = 0xC409
    http_status = 409


class SecurityRejectedError(InvalidInstanceError):
    """The file carries content that is refused for safety (e.g. an executable preamble)."""

    dicom_status = 0xC000
    http_status = 400


class InstanceTooLargeError(OpenVNAError):
    """The dataset exceeds the configured size limit."""

    dicom_status = 0xA700  # Refused: out of resources
    http_status = 413


class OutOfResourcesError(OpenVNAError):
    """Storage could not be written (disk full, permissions)."""

    dicom_status = 0xA700
    http_status = 507


class DuplicateInstanceError(OpenVNAError):
    """Same SOP Instance UID, different content, and the policy keeps the existing one.

    Answered with a warning (not a failure) so that a sending modality does not retry
    forever: the archive still holds an instance under that UID.
    """

    dicom_status = 0xB000
    http_status = 409


class QueryError(OpenVNAError):
    """The query identifier is invalid (bad level, bad range, bad value)."""

    dicom_status = 0xA900  # Identifier does not match SOP class
    http_status = 400


class NotFoundError(OpenVNAError):
    """The requested study, series or instance does not exist."""

    dicom_status = 0xC000
    http_status = 404


class UnknownDestinationError(OpenVNAError):
    """C-MOVE destination AE title is not a configured peer."""

    dicom_status = 0xA801  # Refused: move destination unknown
    http_status = 400


class NotAcceptableError(OpenVNAError):
    """No representation the client accepts can be produced (HTTP ``Accept``)."""

    dicom_status = 0xC000
    http_status = 406


class UnsupportedMediaTypeError(OpenVNAError):
    """The request body's media type is not one this endpoint takes."""

    dicom_status = 0xC000
    http_status = 415


class RequestTooLargeError(OpenVNAError):
    """The request body exceeds the configured limit (``http.max_request_bytes``)."""

    dicom_status = 0xA700
    http_status = 413


class BadRequestError(OpenVNAError):
    """The HTTP request is malformed (bad parameter, bad multipart body)."""

    dicom_status = 0xC000
    http_status = 400
