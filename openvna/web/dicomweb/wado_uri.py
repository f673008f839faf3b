"""WADO-URI (PS3.18 Chapter 9): ``GET /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=``.

Two transactions share the URL and differ by the selected media type (9.3):

* Retrieve DICOM Instance (``contentType=application/dicom``): the stored Part 10 file,
  streamed with Content-Length, or transcoded when ``transferSyntax`` names another
  syntax this archive can produce (lossless only; 406 otherwise).
* Retrieve Rendered Instance (``image/jpeg``, the default for images, ``image/png``,
  ``image/gif``): one frame (``frameNumber``) rendered with ``windowCenter`` /
  ``windowWidth``, cropped to ``region`` and scaled to fit ``rows`` / ``columns``, JPEG at
  ``imageQuality`` (PS3.18 9.5).

Without ``contentType`` the Accept header decides; ``*/*`` gives JPEG for images and the
DICOM file for other objects (there is no text rendering of reports here). Missing or
malformed parameters answer 400, ``anonymize=yes`` 400 (not supported: sending the
identified object instead would leak it), unknown objects 404, unproducible media 406.
``annotation``, ``charset`` and presentation state parameters are accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from openvna.archive.pixels import PixelStore, StoredImage
from openvna.archive.rendering import GIF, JPEG, PNG, RenderOptions, Viewport, Window
from openvna.archive.transcode import can_produce, transcode
from openvna.errors import BadRequestError, NotAcceptableError, NotFoundError
from openvna.index.pixels import PixelSource
from openvna.security.permissions import Permission
from openvna.storage.base import Storage
from openvna.web.access import require_study
from openvna.web.dicomweb.context import DicomWebContext
from openvna.web.dicomweb.frames import check_uid, render_image, single_parameter
from openvna.web.dicomweb.media import DICOM, negotiate, parse_accept

WADO_PATH = "/wado"
_CHUNK = 1024 * 1024


def _required_uid(request: Request, name: str) -> str:
    value = single_parameter(request, name)
    if not value:
        raise BadRequestError(f"query parameter {name} is required (PS3.18 9.1.2)")
    return check_uid(value, name)


def _positive(value: str | None, name: str, maximum: int = 16384) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise BadRequestError(f"{name} must be an integer from 1 to {maximum}")
    return int(value)


def _number(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError as error:
        raise BadRequestError(f"{name} must be a decimal number") from error


def parse_region(text: str) -> tuple[float, float, float, float]:
    """``x1,y1,x2,y2``: the rectangle to return, as fractions 0.0-1.0 (PS3.18 9.5)."""
    parts = text.split(",")
    if len(parts) != 4:
        raise BadRequestError(f"region {text!r} must be x1,y1,x2,y2")
    x1, y1, x2, y2 = (_number(part.strip(), "region") for part in parts)
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise BadRequestError(f"region {text!r}: need 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    return x1, y1, x2, y2


def rendering_options(request: Request, media_type: str) -> RenderOptions:
    """The rendering parameters of PS3.18 9.5 (Retrieve Rendered Instance)."""
    center, width = (
        single_parameter(request, "windowCenter"),
        single_parameter(request, "windowWidth"),
    )
    if (center is None) != (width is None):
        raise BadRequestError("windowCenter and windowWidth go together")
    window = None
    if center is not None and width is not None:
        window = Window(_number(center, "windowCenter"), _number(width, "windowWidth"))
    rows = _positive(single_parameter(request, "rows"), "rows")
    columns = _positive(single_parameter(request, "columns"), "columns")
    region = single_parameter(request, "region")
    quality = _positive(single_parameter(request, "imageQuality"), "imageQuality", 100)
    return RenderOptions(
        media_type=media_type,
        window=window,
        viewport=Viewport(columns, rows) if rows or columns else None,
        region=parse_region(region) if region is not None else None,
        quality=quality or RenderOptions.quality,
    )


def _frame_number(request: Request, frames: int) -> int:
    """``frameNumber``: 400 unless one positive integer within a multi-frame image (9.5.2)."""
    value = single_parameter(request, "frameNumber")
    if value is None:
        return 1
    if frames < 2:
        raise BadRequestError("frameNumber applies to multi-frame images only (PS3.18 9.5.2)")
    if not value.isdigit() or not 1 <= int(value) <= frames:
        raise BadRequestError(f"frameNumber must be an integer from 1 to {frames}")
    return int(value)


def _stored_file(storage: Storage, source: PixelSource) -> Response:
    """The stored Part 10 file as is, streamed with Content-Length."""
    filename = f"{source.sop_instance_uid}.dcm"
    path = storage.local_path(source.storage_key)
    if path is not None:
        return FileResponse(path, media_type=DICOM, filename=filename)
    size = storage.size(source.storage_key)
    stored = storage.open(source.storage_key)
    try:  # read before the response starts: a failed integrity check answers an error
        first = stored.read(_CHUNK)
    except BaseException:
        stored.close()
        raise

    def chunks() -> Iterator[bytes]:
        with stored:
            yield first
            while chunk := stored.read(_CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type=DICOM,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


def _locate(
    store: PixelStore, study: str, series: str, instance: str
) -> tuple[PixelSource, StoredImage | None]:
    """The instance (NotFoundError when unknown) and, when it is an image, its geometry."""
    source = store.source(study, series, instance)
    try:
        return source, store.image(source)
    except NotFoundError:
        return source, None


def routes(context: DicomWebContext) -> list[BaseRoute]:
    store = context.archive.pixels
    storage = context.archive.storage

    async def wado(request: Request) -> Response:
        """PS3.18 9.4 / 9.5: one instance as DICOM or rendered."""
        request_type = single_parameter(request, "requestType")
        if request_type != "WADO":
            raise BadRequestError("requestType=WADO is required (PS3.18 9.1.2.1)")
        study = _required_uid(request, "studyUID")
        series = _required_uid(request, "seriesUID")
        instance = _required_uid(request, "objectUID")
        await require_study(request, context.archive, Permission.READ, study)
        if (single_parameter(request, "anonymize") or "").lower() == "yes":
            raise BadRequestError("anonymize=yes is not supported by this archive")
        content_type = single_parameter(request, "contentType")
        accept = parse_accept(content_type or request.headers.get("accept"))
        transfer_syntax = single_parameter(request, "transferSyntax")
        if transfer_syntax is not None:
            check_uid(transfer_syntax, "transferSyntax")

        source, image = await run_in_threadpool(_locate, store, study, series, instance)
        offered = (JPEG, PNG, GIF, DICOM) if image is not None else (DICOM,)
        media_type, _ = negotiate(accept, offered)

        if media_type == DICOM:
            if transfer_syntax is None or transfer_syntax == source.transfer_syntax_uid:
                return await run_in_threadpool(_stored_file, storage, source)
            if not can_produce(source.transfer_syntax_uid, transfer_syntax):
                raise NotAcceptableError(
                    f"instance stored in {source.transfer_syntax_uid} cannot be sent in "
                    f"{transfer_syntax} (lossless and uncompressed syntaxes only)"
                )

            def transcoded() -> bytes:
                with storage.open(source.storage_key) as stored:
                    return transcode(stored, transfer_syntax)

            return Response(await run_in_threadpool(transcoded), media_type=DICOM)

        assert image is not None
        number = _frame_number(request, image.geometry.number_of_frames)
        options = rendering_options(request, media_type)
        body = await run_in_threadpool(render_image, store, image, [number], options)
        return Response(body, media_type=media_type)

    return [Route(WADO_PATH, wado, methods=["GET"])]
