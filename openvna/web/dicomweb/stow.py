"""STOW-RS, the Studies Store transaction (PS3.18 10.5): the HTTP side.

``POST /studies`` and ``POST /studies/{study}`` take

* ``multipart/related; type="application/dicom"``: one Part 10 file per part
  (PS3.18 10.5.1.2.1);
* ``multipart/related; type="application/dicom+json"``: DICOM JSON metadata (an array of
  instances, PS3.18 F.2) followed by bulk data parts whose ``Content-Location`` matches
  the ``BulkDataURI`` values (PS3.18 10.5.1.2.2); each instance is rebuilt as a Part 10
  file in the transfer syntax its Pixel Data part names (PS3.18 8.7.3.3.2);
* ``application/dicom``: a single Part 10 file as the whole body.

This module holds the routes, the check of the request's form (PS3.18 10.5.1.1) and the
transaction that ties the pieces together. The body is read as it arrives and spooled
part by part (:mod:`.stow_spool`, undoing a gzip or deflate ``Content-Encoding`` in
bounded steps); every complete instance goes through :meth:`Archive.ingest_file`, the
ingest path of C-STORE, in a worker thread while the next part is still being received;
the DICOM JSON form is rebuilt as Part 10 files by :mod:`.stow_json`. The response is
the Store Instances Response Module (PS3.18 Annex I, :mod:`.stow_response`) with the
HTTP status of PS3.18 10.5.3: 200 when every instance was stored, 202 when some failed
or carry warnings, 409 when none was stored.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from pydicom import dcmread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from openvna.archive.header import is_valid_uid, read_file_meta_info_from
from openvna.archive.ingest import ExpectedIdentity, Origin
from openvna.errors import (
    BadRequestError,
    OpenVNAError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from openvna.security.audit.http import study_refs
from openvna.web.dicomweb.context import DicomWebContext
from openvna.web.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML,
    MULTIPART_RELATED,
    negotiate,
    parse_accept,
    parse_media_type,
)
from openvna.web.dicomweb.stow_json import json_identity, load_metadata, write_part10
from openvna.web.dicomweb.stow_response import (
    IDENTITY_TAGS,
    InstanceOutcome,
    dicom_json_to_xml,
    failed_outcome,
    response_dataset,
    response_status,
    stored_outcome,
    warning_header,
)
from openvna.web.dicomweb.stow_spool import ReceivedPart, Receiver
from openvna.web.multipart import BodyDecoder

STREAM_BATCH = 1024 * 1024
"""Received bytes handed to a worker thread at once (parsing and spooling)."""
PIPELINE = 4
"""Instances of one request ingested at the same time while the body is still read."""

_RESPONSE_TYPES = (DICOM_JSON, "application/json", DICOM_XML)


@dataclass(frozen=True)
class _RequestForm:
    """How the request body is laid out, from its Content-Type."""

    part_type: str  # application/dicom or application/dicom+json
    boundary: str | None  # None: the body is one application/dicom instance


def request_form(content_type: str | None) -> _RequestForm:
    """Check the request's Content-Type (PS3.18 10.5.1.1).

    Raises
    ------
    UnsupportedMediaTypeError
        Not ``multipart/related`` with ``type`` application/dicom or application/dicom+json,
        and not ``application/dicom`` (HTTP 415).
    BadRequestError
        ``multipart/related`` without a ``boundary`` parameter (HTTP 400).
    """
    if not content_type:
        raise UnsupportedMediaTypeError(
            'STOW-RS needs a Content-Type: multipart/related; type="application/dicom" '
            '(or type="application/dicom+json"), or application/dicom'
        )
    media = parse_media_type(content_type)
    if media.media_type == DICOM:
        return _RequestForm(DICOM, None)
    if media.media_type != MULTIPART_RELATED:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media.media_type} is not accepted by STOW-RS; send "
            'multipart/related; type="application/dicom" (PS3.18 10.5.1.1)'
        )
    part_type = media.related_type
    if part_type is None:
        raise UnsupportedMediaTypeError(
            'multipart/related needs a type parameter: type="application/dicom" or '
            'type="application/dicom+json" (RFC 2387, PS3.18 10.5.1.1)'
        )
    if part_type not in (DICOM, DICOM_JSON):
        raise UnsupportedMediaTypeError(
            f'multipart/related; type="{part_type}" is not supported; use '
            'type="application/dicom" or type="application/dicom+json"'
        )
    boundary = media.parameters.get("boundary")
    if not boundary:
        raise BadRequestError("multipart/related Content-Type lacks its boundary parameter")
    return _RequestForm(part_type, boundary)


# -- the transaction ------------------------------------------------------------------


class _StoreTransaction:
    """One STOW-RS request: receive, ingest part by part, collect the outcomes."""

    def __init__(
        self,
        context: DicomWebContext,
        directory: Path,
        form: _RequestForm,
        study_uid: str | None,
        origin: Origin,
    ) -> None:
        self._archive = context.archive
        self._directory = directory
        self._form = form
        self._origin = origin
        self._expected: ExpectedIdentity | None = None
        if study_uid is not None:
            # POST /studies/{study}: the ingest path refuses an instance of another study
            # on the header it reads anyway (StudyMismatchError, Failure Reason C409H)
            self._expected = ExpectedIdentity(
                sop_class_uid="", sop_instance_uid="", study_instance_uid=study_uid
            )
        self.outcomes: dict[tuple[int, int], InstanceOutcome] = {}

    async def run(self, body: AsyncIterator[bytes], decoder: BodyDecoder) -> list[InstanceOutcome]:
        max_parts = self._archive.settings.security.limits.multipart_max_parts
        receiver = Receiver(
            decoder, self._form.boundary, self._form.part_type, self._directory, max_parts
        )
        deferred: list[ReceivedPart] = []
        error: Exception | None = None
        limiter = anyio.Semaphore(PIPELINE)

        async def ingest(part: ReceivedPart) -> None:
            try:
                outcome = await anyio.to_thread.run_sync(self._store_part, part)
                self.outcomes[(part.index, 0)] = outcome
            finally:
                limiter.release()

        async with anyio.create_task_group() as group:

            async def dispatch(parts: Iterable[ReceivedPart]) -> None:
                for part in parts:
                    if self._is_part10(part):
                        await limiter.acquire()
                        group.start_soon(ingest, part)
                    else:
                        deferred.append(part)

            try:
                batch: list[bytes] = []
                size = 0
                async for chunk in body:
                    if not chunk:
                        continue
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= STREAM_BATCH:
                        await dispatch(await anyio.to_thread.run_sync(receiver.feed, batch))
                        batch, size = [], 0
                await dispatch(await anyio.to_thread.run_sync(self._finish, receiver, batch))
            except ClientDisconnect:
                error = BadRequestError("the client disconnected before the end of the body")
            except Exception as caught:  # re-raised below, once running ingests are done
                error = caught
        if error is not None:
            receiver.close()
            for part in deferred:
                part.close()
            raise self._after_partial_store(error)
        if deferred:
            await anyio.to_thread.run_sync(self._store_metadata_form, deferred)
        if not self.outcomes:
            raise BadRequestError("the request holds no instance")
        return [self.outcomes[key] for key in sorted(self.outcomes)]

    def _after_partial_store(self, error: Exception) -> Exception:
        """Say in the error which complete instances were stored before it."""
        stored = sum(1 for outcome in self.outcomes.values() if outcome.stored)
        if stored and isinstance(error, BadRequestError | RequestTooLargeError):
            return type(error)(
                f"{error} ({stored} instance(s) received completely before the error were "
                "stored; sending the request again is safe)"
            )
        return error

    # -- Part 10 parts (run in worker threads) --------------------------------------
    def _is_part10(self, part: ReceivedPart) -> bool:
        return self._form.part_type == DICOM or part.media_type.media_type == DICOM

    def _finish(self, receiver: Receiver, batch: list[bytes]) -> list[ReceivedPart]:
        """End the body and ingest its last instance in the same worker thread call.

        A request of one instance (the usual case) then costs one hand-over between the
        event loop and a worker thread instead of two; under load each hand-over may wait
        for the GIL's switch interval.
        """
        parts = receiver.finish(batch)
        if parts and self._is_part10(parts[-1]):
            last = parts.pop()
            self.outcomes[(last.index, 0)] = self._store_part(last)
        return parts

    def _store_part(self, part: ReceivedPart) -> InstanceOutcome:
        try:
            source = part.spool.source()
            return stored_outcome(
                self._archive.ingest_file(source, origin=self._origin, expected=self._expected)
            )
        except Exception as error:
            return failed_outcome(error, lambda: _identify(part.spool.source()))
        finally:
            part.close()

    # -- metadata and bulk data (PS3.18 10.5.1.2.2) ---------------------------------
    def _store_metadata_form(self, parts: list[ReceivedPart]) -> None:
        bulk: dict[str, ReceivedPart] = {}
        metadata: list[ReceivedPart] = []
        for part in parts:
            if part.media_type.media_type == DICOM_JSON:
                metadata.append(part)
            elif part.content_location:
                bulk[part.content_location.strip()] = part
        try:
            for part in metadata:
                try:
                    instances = load_metadata(part)
                except OpenVNAError as error:
                    self.outcomes[(part.index, 0)] = failed_outcome(error, dict)
                    continue
                for number, instance in enumerate(instances):
                    outcome = self._store_instance_json(instance, bulk)
                    self.outcomes[(part.index, number)] = outcome
        finally:
            for part in parts:
                part.close()

    def _store_instance_json(
        self, instance: dict[str, Any], bulk: dict[str, ReceivedPart]
    ) -> InstanceOutcome:
        identity = json_identity(instance)
        try:
            with tempfile.TemporaryFile(dir=self._directory) as part10:
                write_part10(instance, bulk, part10)
                part10.seek(0)
                result = self._archive.ingest_file(
                    part10, origin=self._origin, expected=self._expected
                )
                return stored_outcome(result)
        except Exception as error:
            return failed_outcome(error, lambda: identity)


def _identify(source: BinaryIO) -> dict[str, str]:
    """The identifying UIDs of a Part 10 file, or what of them can be read.

    Read only for an instance that failed, to name it in the FailedSOPSequence.
    """
    try:
        source.seek(0)
        if source.read(132)[128:132] == b"DICM":
            meta = read_file_meta_info_from(source)
            if str(meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99":
                # pydicom inflates a Deflated data set whole: a bomb would fill memory here
                return {
                    "SOPClassUID": str(meta.get("MediaStorageSOPClassUID", "") or "").strip(),
                    "SOPInstanceUID": str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip(),
                }
        source.seek(0)
        dataset = dcmread(
            source,
            stop_before_pixels=True,
            force=True,
            specific_tags=[keyword for keyword, _ in IDENTITY_TAGS],
        )
    except Exception:  # not DICOM: nothing to identify it by
        return {}
    return {keyword: str(dataset.get(keyword, "") or "").strip() for keyword, _ in IDENTITY_TAGS}


# -- routes ---------------------------------------------------------------------------


def routes(context: DicomWebContext) -> list[BaseRoute]:
    """``POST /studies`` and ``POST /studies/{study}`` (PS3.18 10.5.1)."""
    directory = context.archive.settings.data_dir / "tmp" / "stow"
    directory.mkdir(parents=True, exist_ok=True)

    async def store(request: Request) -> Response:
        study_uid: str | None = request.path_params.get("study")
        if study_uid is not None and not is_valid_uid(study_uid):
            raise BadRequestError(f"{study_uid!r} is not a valid Study Instance UID (PS3.5 9.1)")
        media_type, _ = negotiate(parse_accept(request.headers.get("accept")), _RESPONSE_TYPES)
        form = request_form(request.headers.get("content-type"))
        limit = context.http.max_request_bytes
        decoder = BodyDecoder(
            request.headers.get("content-encoding"),
            limit,
            max_compression_ratio=context.http.max_compression_ratio,
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            # refused before reading: with Expect: 100-continue the body is never sent
            raise RequestTooLargeError(
                f"request body of {declared} bytes exceeds the limit of {limit} bytes "
                "(http.max_request_bytes)"
            )
        host = request.client.host if request.client else ""
        transaction = _StoreTransaction(
            context, directory, form, study_uid, Origin(protocol="STOW-RS", remote_address=host)
        )
        outcomes = await transaction.run(request.stream(), decoder)
        request.state.audit_studies = study_refs(
            (o.study_instance_uid, o.sop_class_uid) for o in outcomes if o.stored
        )
        dataset = response_dataset(context, request, study_uid, outcomes)
        if media_type == DICOM_XML:
            content = dicom_json_to_xml(dataset).encode("utf-8")
        else:
            content = json.dumps(dataset, separators=(",", ":")).encode("utf-8")
        headers = {}
        warning = warning_header(outcomes)
        if warning is not None:
            headers["Warning"] = warning
        return Response(
            content,
            status_code=response_status(outcomes),
            media_type=media_type,
            headers=headers,
        )

    return [
        Route("/studies", store, methods=["POST"]),
        Route("/studies/{study}", store, methods=["POST"]),
    ]


__all__ = [
    "PIPELINE",
    "STREAM_BATCH",
    "request_form",
    "routes",
]
