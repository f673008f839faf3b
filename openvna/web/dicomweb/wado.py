"""WADO-RS: retrieve studies, series, instances, metadata and bulk data (PS3.18 10.4).

* Instances go out as ``multipart/related; type="application/dicom"``, one Part 10 file
  per part, streamed from storage in large reads. When every part is sent as stored the
  response has a Content-Length (computed from the index), so the connection is reused.
* Transfer syntax follows the ``Accept`` header (PS3.18 8.7.3.5): ``transfer-syntax=*``
  sends what is stored; no parameter means Explicit VR Little Endian, as the standard
  says; another syntax is produced by :mod:`openvna.archive.transcode` (lossless only).
* ``/metadata`` is answered from the DICOM JSON headers kept in the index at ingest: no
  instance file is opened. BulkDataURIs are made absolute for the client that asked.
* ``/bulkdata/{tag}`` returns one bulk value: Pixel Data straight from its recorded
  offset in the stored file (HTTP ``Range`` honoured for single-part answers), other
  values read with pydicom.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from anyio import to_thread
from pydicom import dcmread
from pydicom.dataset import Dataset
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from openvna.archive.frame_media import media_type_of
from openvna.archive.header import BULK_THRESHOLD
from openvna.archive.transcode import EXPLICIT_VR_LITTLE_ENDIAN, can_produce, transcode
from openvna.errors import (
    BadRequestError,
    NotAcceptableError,
    NotFoundError,
    OutOfResourcesError,
)
from openvna.index.metadata import iter_headers
from openvna.index.pixels import PixelSource, find_pixel_source
from openvna.index.search import RetrievableInstance
from openvna.security.audit.http import study_refs
from openvna.security.permissions import Permission
from openvna.web.access import require_study, study_access
from openvna.web.dicomweb.context import DicomWebContext, resource_url
from openvna.web.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    OCTET_STREAM,
    MediaRange,
    closing_delimiter,
    multipart_content_type,
    negotiate,
    new_boundary,
    parse_accept,
    part_header,
)

_READ_CHUNK = 4 * 1024 * 1024
_WHOLE_FILE = 8 * 1024 * 1024
"""Files up to this size are read in one go (one thread hop per instance)."""
_BATCH_BYTES = 8 * 1024 * 1024
"""Small parts are read and sent together up to about this many bytes."""
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_BULK_PREFIX = '"BulkDataURI":"bulkdata/'
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class PlannedPart:
    instance: RetrievableInstance
    target_transfer_syntax: str | None
    """None: sent as stored."""

    @property
    def transfer_syntax(self) -> str:
        return self.target_transfer_syntax or self.instance.transfer_syntax_uid


def plan_transfer_syntaxes(
    instances: list[RetrievableInstance], ranges: list[MediaRange]
) -> list[PlannedPart]:
    """Pick each instance's transfer syntax from the acceptable media ranges.

    Raises
    ------
    NotAcceptableError
        An instance cannot be sent in any accepted syntax (HTTP 406, before any byte).
    """
    plan = []
    for instance in instances:
        stored = instance.transfer_syntax_uid
        chosen: PlannedPart | None = None
        for media_range in ranges:
            requested = media_range.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
            if requested == "*" or requested == stored:
                chosen = PlannedPart(instance, None)
            elif can_produce(stored, requested):
                chosen = PlannedPart(instance, requested)
            if chosen is not None:
                break
        if chosen is None:
            wanted = ", ".join(r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN for r in ranges)
            raise NotAcceptableError(
                f"SOP Instance {instance.sop_instance_uid} is stored as {stored} and cannot "
                f"be sent as {wanted}; ask with transfer-syntax=* to get it as stored"
            )
        plan.append(chosen)
    return plan


def _dicom_ranges(accept: list[MediaRange], single_instance: bool) -> tuple[bool, list[MediaRange]]:
    """(multipart?, the ranges that ask for DICOM instances) of an Accept header."""
    multipart = [
        r
        for r in accept
        if r.quality > 0
        and (r.media_type in ("*/*", MULTIPART_RELATED, "multipart/*"))
        and r.related_type in (None, DICOM)
    ]
    if multipart:
        return True, multipart
    if single_instance:
        single = [r for r in accept if r.quality > 0 and r.accepts(DICOM)]
        if single:
            return False, single
    wanted = ", ".join(r.media_type for r in accept)
    raise NotAcceptableError(
        f"cannot answer with {wanted}: instances are sent as "
        'multipart/related; type="application/dicom"'
        + (" or application/dicom" if single_instance else "")
    )


def routes(context: DicomWebContext) -> list[BaseRoute]:
    archive = context.archive
    storage = archive.storage

    def read_whole(key: str) -> bytes:
        with storage.open(key) as handle:
            return handle.read()

    def read_parts(parts: list[tuple[bytes, RetrievableInstance]]) -> memoryview:
        """Several small parts (delimiter + headers, then the file) read into one buffer.

        One thread hop and one socket write per few megabytes instead of two per
        instance; files are read straight into the buffer (``readinto``), no extra copy.
        """
        total = sum(len(header) + instance.size_bytes for header, instance in parts)
        view = memoryview(bytearray(total))
        position = 0
        for header, instance in parts:
            view[position : position + len(header)] = header
            position += len(header)
            end = position + instance.size_bytes
            with storage.open(instance.storage_key) as handle:
                while position < end:
                    count = handle.readinto(view[position:end])  # type: ignore[attr-defined]
                    if not count:
                        raise OutOfResourcesError(
                            f"stored object {instance.storage_key} is shorter than indexed"
                        )
                    position += count
        return view

    def transcoded(key: str, target: str) -> bytes:
        with storage.open(key) as handle:
            return transcode(handle, target)

    async def stream_file(key: str, size: int) -> AsyncIterator[bytes]:
        if size <= _WHOLE_FILE:
            yield await to_thread.run_sync(read_whole, key)
            return
        handle: BinaryIO = await to_thread.run_sync(storage.open, key)
        try:
            while chunk := await to_thread.run_sync(handle.read, _READ_CHUNK):
                yield chunk
        finally:
            handle.close()

    async def retrieve(
        request: Request, study: str, series: str | None = None, instance: str | None = None
    ) -> Response:
        accept = parse_accept(request.headers.get("accept"))
        multipart, ranges = _dicom_ranges(accept, single_instance=instance is not None)
        access = study_access(request, archive)
        found = await to_thread.run_sync(
            lambda: archive.find_retrievable(
                study_uids=(study,),
                series_uids=(series,) if series else (),
                sop_instance_uids=(instance,) if instance else (),
                access=access,
            )
        )
        if not found:
            raise NotFoundError(_not_found(study, series, instance))
        request.state.audit_studies = study_refs(
            (i.study_instance_uid, i.sop_class_uid) for i in found
        )
        plan = plan_transfer_syntaxes(found, ranges)
        if not multipart:
            part = plan[0]
            headers = {"Content-Type": f"{DICOM}; transfer-syntax={part.transfer_syntax}"}
            if part.target_transfer_syntax is None:
                headers["Content-Length"] = str(part.instance.size_bytes)
                return StreamingResponse(
                    await _started(
                        stream_file(part.instance.storage_key, part.instance.size_bytes)
                    ),
                    headers=headers,
                )
            data = await to_thread.run_sync(
                transcoded, part.instance.storage_key, part.target_transfer_syntax
            )
            return Response(data, headers=headers)
        boundary = new_boundary()
        part_headers = [
            part_header(
                boundary,
                f"{DICOM}; transfer-syntax={part.transfer_syntax}",
                first=index == 0,
            )
            for index, part in enumerate(plan)
        ]
        closing = closing_delimiter(boundary)

        async def body() -> AsyncIterator[bytes | memoryview]:
            batch: list[tuple[bytes, RetrievableInstance]] = []
            batched = 0
            for part, header in zip(plan, part_headers, strict=True):
                size = part.instance.size_bytes
                if part.target_transfer_syntax is None and size <= _WHOLE_FILE:
                    batch.append((header, part.instance))
                    batched += len(header) + size
                    if batched >= _BATCH_BYTES:
                        yield await to_thread.run_sync(read_parts, batch)
                        batch, batched = [], 0
                    continue
                if batch:
                    yield await to_thread.run_sync(read_parts, batch)
                    batch, batched = [], 0
                yield header
                if part.target_transfer_syntax is None:
                    async for chunk in stream_file(part.instance.storage_key, size):
                        yield chunk
                else:
                    yield await to_thread.run_sync(
                        transcoded, part.instance.storage_key, part.target_transfer_syntax
                    )
            if batch:
                yield await to_thread.run_sync(read_parts, batch)
            yield closing

        headers = {"Content-Type": multipart_content_type(boundary, DICOM)}
        if all(part.target_transfer_syntax is None for part in plan):
            length = sum(len(h) for h in part_headers) + len(closing)
            length += sum(part.instance.size_bytes for part in plan)
            headers["Content-Length"] = str(length)
        return StreamingResponse(await _started(body()), headers=headers)

    async def retrieve_resource(request: Request) -> Response:
        """Study, series or instance retrieve: the path holds one, two or three UIDs."""
        params = request.path_params
        return await retrieve(
            request, params["study"], params.get("series"), params.get("instance")
        )

    def metadata_chunks(
        base: str, study: str, series: str | None, instance: str | None
    ) -> Iterator[bytes]:
        """The JSON array, a few hundred headers per chunk, BulkDataURIs made absolute."""
        batch: list[str] = []
        started = False

        def joined() -> bytes:
            nonlocal started
            prefix = "," if started else "["
            started = True
            return (prefix + ",".join(batch)).encode()

        for header in iter_headers(archive.engine, study, series, instance):
            url = (
                resource_url(
                    base,
                    header.study_instance_uid,
                    header.series_instance_uid,
                    header.sop_instance_uid,
                )
                + "/bulkdata/"
            )
            batch.append(header.dicom_json.replace(_BULK_PREFIX, f'"BulkDataURI":"{url}'))
            if len(batch) == 256:
                yield joined()
                batch = []
        if not started and not batch:
            raise NotFoundError(_not_found(study, series, instance))
        yield (joined() if batch else b"") + b"]"

    async def metadata(
        request: Request, study: str, series: str | None = None, instance: str | None = None
    ) -> Response:
        negotiate(parse_accept(request.headers.get("accept")), [DICOM_JSON, "application/json"])
        await require_study(request, archive, Permission.READ, study)
        base = context.base_url(request)
        chunks = metadata_chunks(base, study, series, instance)
        first = await to_thread.run_sync(next, chunks)  # 404 before the response starts
        second = await to_thread.run_sync(next, chunks, None)
        if second is None:
            return Response(first, media_type=DICOM_JSON)

        async def rest() -> AsyncIterator[bytes]:
            yield first
            yield second
            async for chunk in iterate_in_threadpool(chunks):
                yield chunk

        return StreamingResponse(rest(), media_type=DICOM_JSON)

    async def metadata_resource(request: Request) -> Response:
        """Study, series or instance metadata: the path holds one, two or three UIDs."""
        params = request.path_params
        return await metadata(
            request, params["study"], params.get("series"), params.get("instance")
        )

    async def bulkdata(request: Request) -> Response:
        params = request.path_params
        study, series, instance = params["study"], params["series"], params["instance"]
        tag = _parse_tag(params["tag"])
        await require_study(request, archive, Permission.READ, study)
        location = await to_thread.run_sync(
            find_pixel_source, archive.engine, study, series, instance
        )
        accept = parse_accept(request.headers.get("accept"))
        if (
            tag == _PIXEL_DATA
            and location.pixel_data_offset is not None
            and location.pixel_data_length not in (None, _UNDEFINED_LENGTH)
        ):
            return await _native_pixel_bulkdata(request, accept, location)
        if tag == _PIXEL_DATA and location.pixel_data_length == _UNDEFINED_LENGTH:
            parts = await to_thread.run_sync(encapsulated_frames, location)
        else:
            parts = await to_thread.run_sync(_bulk_value_parts, storage, location, tag)
        media_types = {media_type.split(";")[0] for media_type, _ in parts}
        single_offer = [OCTET_STREAM] if media_types == {OCTET_STREAM} and len(parts) == 1 else []
        chosen, media_range = negotiate(accept, [*single_offer, MULTIPART_RELATED])
        if chosen == OCTET_STREAM:
            return Response(parts[0][1], media_type=OCTET_STREAM)
        if media_range.related_type not in (None, *media_types):
            raise NotAcceptableError(
                f"bulk data {tag:08X} is available as {', '.join(sorted(media_types))}"
            )
        boundary = new_boundary()
        body = b"".join(
            part_header(boundary, media_type, first=index == 0) + value
            for index, (media_type, value) in enumerate(parts)
        )
        body += closing_delimiter(boundary)
        first_type = parts[0][0].split(";")[0] if parts else OCTET_STREAM
        return Response(
            body, headers={"Content-Type": multipart_content_type(boundary, first_type)}
        )

    def encapsulated_frames(location: PixelSource) -> list[tuple[str, bytes]]:
        """Compressed Pixel Data frame by frame, each in its media type (PS3.18
        8.7.3.3.2), read through the archive's frame store (cached fragment tables)."""
        image = archive.pixels.image(location)
        numbers = list(range(1, image.geometry.number_of_frames + 1))
        syntax = location.transfer_syntax_uid
        content_type = f"{media_type_of(syntax)}; transfer-syntax={syntax}"
        return [(content_type, frame) for frame in archive.pixels.read_frames(image, numbers)]

    async def _native_pixel_bulkdata(
        request: Request, accept: list[MediaRange], location: PixelSource
    ) -> Response:
        """Uncompressed Pixel Data: a byte range of the stored file, never parsed."""
        assert location.pixel_data_offset is not None and location.pixel_data_length is not None
        chosen, _ = negotiate(accept, [MULTIPART_RELATED, OCTET_STREAM])
        length = location.pixel_data_length
        start, end = 0, length - 1
        status = 200
        headers: dict[str, str] = {"Accept-Ranges": "bytes"}
        requested = request.headers.get("range")
        if requested:  # a range of the value, in one part or alone
            match = _RANGE.match(requested.strip())
            if match and (match.group(1) or match.group(2)):
                first_text, last_text = match.groups()
                if first_text:
                    start = int(first_text)
                    end = min(int(last_text), length - 1) if last_text else length - 1
                else:
                    start = max(0, length - int(last_text))
                if start >= length or start > end:
                    return Response(status_code=416, headers={"Content-Range": f"bytes */{length}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{length}"

        def read_range() -> bytes:
            assert location.pixel_data_offset is not None
            with storage.open(location.storage_key) as handle:
                handle.seek(location.pixel_data_offset + start)
                return handle.read(end - start + 1)

        data = await to_thread.run_sync(read_range)
        if chosen == OCTET_STREAM:
            return Response(data, status_code=status, media_type=OCTET_STREAM, headers=headers)
        boundary = new_boundary()
        body = part_header(boundary, OCTET_STREAM, first=True) + data + closing_delimiter(boundary)
        headers["Content-Type"] = multipart_content_type(boundary, OCTET_STREAM)
        return Response(body, status_code=status, headers=headers)

    return [
        Route("/studies/{study}/metadata", metadata_resource, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", metadata_resource, methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            metadata_resource,
            methods=["GET"],
        ),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag:path}",
            bulkdata,
            methods=["GET"],
        ),
        Route("/studies/{study}", retrieve_resource, methods=["GET"]),
        Route("/studies/{study}/series/{series}", retrieve_resource, methods=["GET"]),
        Route(
            "/studies/{study}/series/{series}/instances/{instance}",
            retrieve_resource,
            methods=["GET"],
        ),
    ]


async def _started(
    body: AsyncIterator[bytes | memoryview],
) -> AsyncIterator[bytes | memoryview]:
    """``body`` with its first piece read before the response starts: an instance that
    fails there (encrypted storage checks integrity as it reads) answers an error status
    instead of a 200 cut short. Small instances are read whole in that first piece."""
    first = await anext(body, None)

    async def chained() -> AsyncIterator[bytes | memoryview]:
        if first is not None:
            yield first
        async for piece in body:
            yield piece

    return chained()


def _not_found(study: str, series: str | None, instance: str | None) -> str:
    if instance:
        return f"no instance {instance} in series {series} of study {study}"
    if series:
        return f"no series {series} in study {study}"
    return f"no study {study}"


def _parse_tag(text: str) -> int:
    """The tag of a ``bulkdata/{tag}`` path (the form our BulkDataURIs use)."""
    cleaned = text.strip("/")
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", cleaned):
        raise BadRequestError(f"bulk data reference {text!r} is not an 8-hex-digit tag")
    return int(cleaned, 16)


def _find_element(dataset: Dataset, tag: int) -> Any:
    """The element with ``tag``: top level first, then depth-first through sequences."""
    if tag in dataset:
        return dataset[tag]
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                found = _find_element(item, tag)
                if found is not None:
                    return found
    return None


def _bulk_value_parts(storage: Any, location: PixelSource, tag: int) -> list[tuple[str, bytes]]:
    """One bulk value other than encapsulated Pixel Data, read with pydicom, as one
    application/octet-stream part. Large values stay deferred until the one asked for
    is read, so the other bulk data (Pixel Data, usually) is never loaded."""
    with storage.open(location.storage_key) as handle:
        dataset = dcmread(handle, defer_size=BULK_THRESHOLD)
        element = _find_element(dataset, tag)
        if element is None or element.value is None:
            raise NotFoundError(f"the instance has no bulk data element {tag:08X}")
        value = element.value
        if isinstance(value, bytes):
            return [(OCTET_STREAM, value)]
        raise NotFoundError(f"element {tag:08X} holds no binary value")
