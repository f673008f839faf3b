"""WADO-RS frames, rendered and thumbnail resources (PS3.18 10.4, 8.3.5, 8.7.3, 8.7.4).

* ``.../instances/{instance}/frames/{frame_list}``: pixel data of the listed frames
  (1-based, comma separated, no duplicates), each frame one part of a
  ``multipart/related`` answer. ``application/octet-stream`` parts carry native
  little-endian pixels (Explicit VR Little Endian, the default); ``transfer-syntax=*``
  takes frames as stored; the compressed media types of PS3.18 Table 8.7.3-2 take
  codestreams, transcoded where needed (:mod:`openvna.archive.frame_codec`).
* ``.../rendered`` of an instance or of frames: a consumer image (JPEG by default, PNG,
  GIF) with the ``window``, ``viewport`` and ``quality`` parameters of 8.3.5.1. A
  multi-frame instance renders its first frame.
* ``.../thumbnail`` of a study, series, instance or frame: a small rendered image
  (viewport 128x128 unless asked otherwise) of the representative middle image.

Malformed requests answer 400, unknown instances and frames 404, representations that
cannot be produced 406. The frame hot path is one index lookup and one ``os.pread``
run in a worker thread, answered with a complete body and Content-Length.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from openvna.archive.frame_codec import decode_frame, transcode_frame
from openvna.archive.frame_media import FrameRepresentation, is_video, negotiate_frames
from openvna.archive.header import is_valid_uid
from openvna.archive.pixels import PixelStore, StoredImage
from openvna.archive.rendering import (
    RENDERED_MEDIA_TYPES,
    RenderOptions,
    Viewport,
    Window,
    render,
)
from openvna.errors import BadRequestError, NotAcceptableError
from openvna.security.permissions import Permission
from openvna.web.access import require_study
from openvna.web.dicomweb.context import DicomWebContext
from openvna.web.dicomweb.media import (
    MediaRange,
    closing_delimiter,
    multipart_content_type,
    negotiate,
    new_boundary,
    parse_accept,
    part_header,
)

_FRAME_LIST = re.compile(r"[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*")
_WHOLE_BODY_BYTES = 32 * 1024 * 1024
"""Frame answers up to this size are built whole (one thread hop, Content-Length);
larger ones stream frame by frame."""
THUMBNAIL_SIZE = 128


def parse_frame_list(text: str) -> list[int]:
    """``1`` or ``1,3,5``: positive frame numbers without duplicates (PS3.18 8.3.3.1)."""
    compact = text.replace("%2C", ",").replace("%2c", ",").replace(" ", "")
    if not _FRAME_LIST.fullmatch(compact):
        raise BadRequestError(
            f"malformed frame list {text!r}: expected comma-separated frame numbers from 1"
        )
    numbers = [int(part) for part in compact.split(",")]
    if len(set(numbers)) != len(numbers):
        raise BadRequestError(f"frame list {text!r} repeats a frame number")
    return numbers


def check_uid(value: str, what: str) -> str:
    """``value`` when it is a well-formed UID, else 400 (PS3.5 9.1)."""
    if not is_valid_uid(value):
        raise BadRequestError(f"{what} {value!r} is not a valid UID (PS3.5 9.1)")
    return value


def _accept(request: Request) -> list[MediaRange]:
    """The Accept header, or the ``accept`` query parameter that overrides it (8.3.3.1)."""
    values = request.query_params.getlist("accept")
    return parse_accept(",".join(values) if values else request.headers.get("accept"))


def single_parameter(request: Request, name: str) -> str | None:
    """A query parameter that may appear at most once (400 when repeated)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequestError(f"query parameter {name} is given more than once")
    return values[0] if values else None


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4); function linear, linear-exact,
    sigmoid."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise BadRequestError(f"window {text!r} must be center,width[,function]")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as error:
        raise BadRequestError(f"window {text!r}: center and width must be numbers") from error
    function = parts[2].upper().replace("-", "_") if len(parts) == 3 and parts[2] else "LINEAR"
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); empty source fields take defaults."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 6):
        raise BadRequestError(f"viewport {text!r} must be vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        numbers = [int(part) if part else None for part in parts]
    except ValueError as error:
        raise BadRequestError(f"viewport {text!r}: values must be integers") from error
    if numbers[0] is None or numbers[1] is None:
        raise BadRequestError(f"viewport {text!r}: width and height are required")
    extra = numbers[2:] + [None] * (6 - len(numbers))
    return Viewport(numbers[0], numbers[1], extra[0] or 0, extra[1] or 0, extra[2], extra[3])


def render_options(request: Request, *, thumbnail: bool = False) -> RenderOptions:
    """Rendered-resource query parameters (PS3.18 8.3.5.1); ``annotation`` and unknown
    parameters are accepted and ignored (8.3.5.1.1: no annotation is burnt in)."""
    media_type, _ = negotiate(_accept(request), RENDERED_MEDIA_TYPES)
    window = single_parameter(request, "window")
    viewport = single_parameter(request, "viewport")
    quality = single_parameter(request, "quality")
    if quality is not None and not quality.isdigit():
        raise BadRequestError("quality must be an integer from 1 to 100")
    default_viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
    return RenderOptions(
        media_type=media_type,
        window=parse_window(window) if window is not None else None,
        viewport=parse_viewport(viewport) if viewport is not None else default_viewport,
        quality=int(quality) if quality is not None else RenderOptions.quality,
    )


def render_image(
    store: PixelStore, image: StoredImage, numbers: list[int], options: RenderOptions
) -> bytes:
    """Read, decode and render frames of ``image`` (blocking: run in a thread)."""
    image.check_frames(numbers)
    frames = store.read_frames(image, numbers)
    arrays = [decode_frame(f, image.stored_frame_syntax, image.geometry) for f in frames]
    return render(arrays, numbers, image.header(), image.geometry, options)


def routes(context: DicomWebContext) -> list[BaseRoute]:
    store = context.archive.pixels
    instance_path = "/studies/{study}/series/{series}/instances/{instance}"

    async def uids(request: Request) -> tuple[str, str, str]:
        """The path's UIDs, once the study is known to be visible to the principal."""
        params = request.path_params
        checked = (
            check_uid(params["study"], "Study Instance UID"),
            check_uid(params["series"], "Series Instance UID"),
            check_uid(params["instance"], "SOP Instance UID"),
        )
        await require_study(request, context.archive, Permission.READ, checked[0])
        return checked

    async def retrieve_frames(request: Request) -> Response:
        """PS3.18 10.4: frames of one instance."""
        study, series, instance = await uids(request)
        numbers = parse_frame_list(request.path_params["frames"])
        accept = _accept(request)
        location = context.instance_url(request, study, series, instance) + "/frames/"
        answer = await run_in_threadpool(
            _frames_answer, store, (study, series, instance), numbers, accept, location
        )
        if isinstance(answer, Response):
            return answer
        return await _stream_frames(store, answer)

    async def rendered(request: Request) -> Response:
        """PS3.18 10.4: rendered instance (first frame) or rendered frames."""
        study, series, instance = await uids(request)
        frames = request.path_params.get("frames")
        numbers = parse_frame_list(frames) if frames is not None else [1]
        options = render_options(request)

        def work() -> bytes:
            return render_image(store, store.instance(study, series, instance), numbers, options)

        return Response(await run_in_threadpool(work), media_type=options.media_type)

    async def thumbnail(request: Request) -> Response:
        """PS3.18 10.4.3.3.4: one small image standing for the resource."""
        params = request.path_params
        study = check_uid(params["study"], "Study Instance UID")
        series = params.get("series")
        if series is not None:
            check_uid(series, "Series Instance UID")
        instance = params.get("instance")
        if instance is not None:
            check_uid(instance, "SOP Instance UID")
        frames = params.get("frames")
        number = parse_frame_list(frames)[0] if frames is not None else 1
        options = render_options(request, thumbnail=True)
        await require_study(request, context.archive, Permission.READ, study)

        def work() -> bytes:
            if instance is not None and series is not None:
                image = store.instance(study, series, instance)
            else:
                image = store.representative(study, series)
            return render_image(store, image, [number], options)

        return Response(await run_in_threadpool(work), media_type=options.media_type)

    get = ["GET"]
    return [
        Route(instance_path + "/frames/{frames}", retrieve_frames, methods=get),
        Route(instance_path + "/frames/{frames}/rendered", rendered, methods=get),
        Route(instance_path + "/frames/{frames}/thumbnail", thumbnail, methods=get),
        Route(instance_path + "/rendered", rendered, methods=get),
        Route(instance_path + "/thumbnail", thumbnail, methods=get),
        Route("/studies/{study}/series/{series}/thumbnail", thumbnail, methods=get),
        Route("/studies/{study}/thumbnail", thumbnail, methods=get),
    ]


@dataclass(frozen=True)
class _StreamPlan:
    """A frame answer too large to build whole: streamed frame by frame."""

    image: StoredImage
    numbers: list[int]
    representation: FrameRepresentation
    location: str
    content_length: int | None


def _frames_answer(
    store: PixelStore,
    triple: tuple[str, str, str],
    numbers: list[int],
    accept: list[MediaRange],
    location: str,
) -> Response | _StreamPlan:
    """Everything blocking of a frames request, in one worker-thread call."""
    image = store.instance(*triple)
    image.check_frames(numbers)
    stored_syntax = image.stored_frame_syntax
    if is_video(stored_syntax):
        raise NotAcceptableError(
            "frames of a video (MPEG/H.264/HEVC) cannot be retrieved one by one; "
            "retrieve the instance or its bulk data"
        )
    representation = negotiate_frames(accept, stored_syntax, len(numbers))
    transcoding = representation.transfer_syntax != stored_syntax
    frame_bytes = image.geometry.frame_bits // 8
    if len(numbers) * frame_bytes > _WHOLE_BODY_BYTES:
        native_length = None
        if not transcoding and image.is_native and image.geometry.frame_bits % 8 == 0:
            native_length = frame_bytes
        return _StreamPlan(image, numbers, representation, location, native_length)
    frames = store.read_frames(image, numbers)
    if transcoding:
        frames = [
            transcode_frame(f, stored_syntax, representation.transfer_syntax, image.geometry)
            for f in frames
        ]
    if not representation.multipart:
        return Response(frames[0], media_type=representation.part_content_type)
    boundary = new_boundary()
    pieces: list[bytes] = []
    for index, (number, frame) in enumerate(zip(numbers, frames, strict=True)):
        pieces.append(_part_header(boundary, representation, location, number, first=index == 0))
        pieces.append(frame)
    pieces.append(closing_delimiter(boundary))
    return Response(b"".join(pieces), media_type=_multipart_type(boundary, representation))


def _part_header(
    boundary: str, representation: FrameRepresentation, location: str, number: int, first: bool
) -> bytes:
    return part_header(
        boundary,
        representation.part_content_type,
        first=first,
        headers={"Content-Location": f"{location}{number}"},
    )


def _multipart_type(boundary: str, representation: FrameRepresentation) -> str:
    return multipart_content_type(
        boundary,
        representation.media_type,
        **{"transfer-syntax": representation.transfer_syntax},
    )


async def _stream_frames(store: PixelStore, plan: _StreamPlan) -> Response:
    """Large frame lists: one frame in memory at a time (ARCHITECTURE.md property 6)."""
    representation = plan.representation
    multipart = representation.multipart
    boundary = new_boundary()
    headers = [
        _part_header(boundary, representation, plan.location, number, first=index == 0)
        if multipart
        else b""
        for index, number in enumerate(plan.numbers)
    ]
    closing = closing_delimiter(boundary) if multipart else b""
    stored_syntax = plan.image.stored_frame_syntax

    def one_frame(number: int) -> bytes:
        frame = store.read_frames(plan.image, [number])[0]
        return transcode_frame(
            frame, stored_syntax, representation.transfer_syntax, plan.image.geometry
        )

    async def body() -> AsyncIterator[bytes]:
        for header, number in zip(headers, plan.numbers, strict=True):
            if header:
                yield header
            yield await run_in_threadpool(one_frame, number)
        if closing:
            yield closing

    response_headers = {}
    if plan.content_length is not None:
        total = sum(map(len, headers)) + len(closing) + plan.content_length * len(plan.numbers)
        response_headers["Content-Length"] = str(total)
    media_type = (
        _multipart_type(boundary, representation) if multipart else representation.part_content_type
    )
    return StreamingResponse(body(), media_type=media_type, headers=response_headers)
