"""Frames rendered for people: what WADO-RS rendered/thumbnail and WADO-URI return.

The grayscale pipeline follows PS3.3 C.11 (and PS3.4 N.2): Modality LUT as Rescale
Slope/Intercept (C.11.1.1.2), then the VOI window (C.11.2.1.2: LINEAR, LINEAR_EXACT,
SIGMOID) from the request, else from the header (first value), else the frame's
minimum/maximum, then inversion for MONOCHROME1 (C.7.6.3.1.2). For enhanced multi-frame
objects the transformation and window come from the frame's Functional Groups (C.7.6.16)
when not at the top level. Colour is shown as RGB (YCbCr converted by the decoder, PALETTE
COLOR through its inline lookup tables, C.7.6.3.1.5).

The result is cropped and scaled as PS3.18 8.3.5.1.3 ``viewport`` (or WADO-URI's
``region``/``rows``/``columns``, PS3.18 9.5) asks: the source region is scaled to fit the
viewport keeping its aspect ratio, a negative source width or height flips the image.
Pillow encodes JPEG, PNG and GIF (animated when several frames are asked for as GIF).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from openvna.archive.pixels import FrameGeometry
from openvna.errors import BadRequestError, NotAcceptableError

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)
"""Rendered media types produced here (PS3.18 8.7.4: JPEG, PNG and GIF are required)."""
DEFAULT_QUALITY = 90
_FORMATS = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF"}
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2), in Modality LUT output units."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in _WINDOW_FUNCTIONS:
            raise BadRequestError(
                f"window function {self.function!r} is not one of "
                f"{', '.join(f.lower() for f in _WINDOW_FUNCTIONS)}"
            )
        if not np.isfinite(self.center) or not np.isfinite(self.width):
            raise BadRequestError("window center and width must be finite numbers")
        minimum = 1.0 if self.function == "LINEAR" else 0.0
        if self.width < minimum or (minimum == 0.0 and self.width <= 0):
            raise BadRequestError(
                f"window width must be {'at least 1' if minimum else 'above 0'} "
                f"for {self.function.lower()} (PS3.3 C.11.2.1.2)"
            )


@dataclass(frozen=True)
class Viewport:
    """Output size and source region (PS3.18 8.3.5.1.3); None leaves a side free."""

    width: int | None
    height: int | None
    source_x: int = 0
    source_y: int = 0
    source_width: int | None = None
    """None: to the right edge; negative: the region extends left and is flipped."""
    source_height: int | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 16384:
                raise BadRequestError(f"viewport {name} must be between 1 and 16384")
        if self.source_x < 0 or self.source_y < 0:
            raise BadRequestError("viewport source x and y must not be negative")
        if self.source_width == 0 or self.source_height == 0:
            raise BadRequestError("viewport source width and height must not be 0")


@dataclass(frozen=True)
class RenderOptions:
    """What the client asked for; the defaults give the header's own presentation."""

    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    region: tuple[float, float, float, float] | None = None
    """WADO-URI ``region``: x1, y1, x2, y2 as fractions of the image (PS3.18 9.5)."""
    quality: int = DEFAULT_QUALITY
    frame_duration_ms: int = 100

    def __post_init__(self) -> None:
        if self.media_type not in RENDERED_MEDIA_TYPES:
            raise NotAcceptableError(f"cannot render as {self.media_type}")
        if not 1 <= self.quality <= 100:
            raise BadRequestError("quality must be an integer from 1 to 100")


def render(
    arrays: Sequence[np.ndarray],
    frame_numbers: Sequence[int],
    header: dict[str, Any],
    geometry: FrameGeometry,
    options: RenderOptions,
) -> bytes:
    """Encode decoded frames (from :func:`~openvna.archive.frame_codec.decode_frame`)."""
    if len(arrays) > 1 and options.media_type != GIF:
        raise NotAcceptableError(
            f"{len(arrays)} frames cannot be one {options.media_type} image: ask for one "
            "frame, or for image/gif (animated)"
        )
    images = [
        _fit(
            Image.fromarray(display_pixels(array, number, header, geometry, options.window)),
            options,
        )
        for array, number in zip(arrays, frame_numbers, strict=True)
    ]
    output = io.BytesIO()
    first = images[0]
    if options.media_type == JPEG:
        first.save(output, "JPEG", quality=options.quality)
    elif options.media_type == PNG:
        first.save(output, "PNG")
    else:
        duration = _frame_time(header) or options.frame_duration_ms
        first.save(
            output,
            "GIF",
            save_all=len(images) > 1,
            append_images=images[1:],
            duration=duration,
            loop=0,
        )
    return output.getvalue()


def display_pixels(
    array: np.ndarray,
    frame_number: int,
    header: dict[str, Any],
    geometry: FrameGeometry,
    window: Window | None,
) -> np.ndarray:
    """8-bit display values: (rows, columns) grayscale or (rows, columns, 3) RGB."""
    photometric = geometry.photometric_interpretation
    if photometric == "PALETTE COLOR":
        return _palette(array, header)
    if array.ndim == 3:
        return _colour(array, geometry, window)
    slope = _number(_attribute(header, frame_number, "00289145", "00281053")) or 1.0
    intercept = _number(_attribute(header, frame_number, "00289145", "00281052")) or 0.0
    window = window or header_window(header, frame_number)
    invert = photometric == "MONOCHROME1"
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 2 and array.size > 4096:
        # Integer pixels: run the pipeline once per stored value, then look each pixel up.
        low = int(array.min())
        domain = np.arange(low, int(array.max()) + 1, dtype=np.float32)
        table = _grayscale(domain, slope, intercept, window, invert)
        return np.asarray(table[array.astype(np.int32) - low], dtype=np.uint8)
    return _grayscale(array.astype(np.float32), slope, intercept, window, invert)


def _grayscale(
    values: np.ndarray, slope: float, intercept: float, window: Window | None, invert: bool
) -> np.ndarray:
    """Modality LUT, VOI window, MONOCHROME1 inversion: stored values to 8-bit display."""
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
    display = _apply_window(values, window)
    if invert:
        display = 255.0 - display
    return _to_uint8(display)


def header_window(header: dict[str, Any], frame_number: int) -> Window | None:
    """The first window of the header or the frame's functional groups, if valid."""
    centers = _attribute(header, frame_number, "00289132", "00281050")
    widths = _attribute(header, frame_number, "00289132", "00281051")
    functions = _attribute(header, frame_number, "00289132", "00281056")
    center, width = _number(centers), _number(widths)
    if center is None or width is None:
        return None
    function = str(functions[0]).upper() if functions else "LINEAR"
    try:
        return Window(center, width, function)
    except BadRequestError:  # a header window we cannot apply: fall back to min/max
        return None


def _apply_window(values: np.ndarray, window: Window | None) -> np.ndarray:
    """PS3.3 C.11.2.1.2 with output range 0..255 (min/max of the frame without window)."""
    if window is None:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.float32)
        scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    elif window.function == "LINEAR" and window.width == 1:
        # a threshold: below the center black, above white
        scaled = np.where(values > window.center - 0.5, np.float32(255.0), np.float32(0.0))
    elif window.function == "LINEAR":
        offset = values - np.float32(window.center - 0.5)
        scaled = (offset / np.float32(window.width - 1) + 0.5) * 255.0
    elif window.function == "LINEAR_EXACT":
        scaled = ((values - np.float32(window.center)) / np.float32(window.width) + 0.5) * 255.0
    else:
        exponent = -4.0 * (values - np.float32(window.center)) / np.float32(window.width)
        scaled = 255.0 / (1.0 + np.exp(exponent))
    return np.asarray(np.clip(scaled, 0.0, 255.0), dtype=np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(values), 0, 255), dtype=np.uint8)


def _colour(array: np.ndarray, geometry: FrameGeometry, window: Window | None) -> np.ndarray:
    if window is not None:
        return _to_uint8(_apply_window(array.astype(np.float32), window))
    if array.dtype == np.uint8:
        return array
    shift = max(0, geometry.bits_stored - 8)
    return _to_uint8(array.astype(np.int64) >> shift)


def _palette(array: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """PALETTE COLOR through its inline LUTs (PS3.3 C.7.6.3.1.5, C.7.9)."""
    channels = []
    for descriptor_tag, data_tag in (
        ("00281101", "00281201"),
        ("00281102", "00281202"),
        ("00281103", "00281203"),
    ):
        descriptor = header.get(descriptor_tag, {}).get("Value")
        data = header.get(data_tag, {}).get("InlineBinary")
        if not descriptor or len(descriptor) < 3 or not data:
            raise NotAcceptableError("this PALETTE COLOR image has no inline lookup tables")
        entries, first, bits = (int(v) for v in descriptor[:3])
        entries = entries or 65536
        raw = base64.b64decode(data)
        lut = np.frombuffer(raw, dtype="<u2" if len(raw) >= 2 * entries else np.uint8)[:entries]
        index = np.clip(array.astype(np.int64) - first, 0, len(lut) - 1)
        values = lut[index]
        channels.append(values >> 8 if bits == 16 else values)
    return np.asarray(np.stack(channels, axis=-1), dtype=np.uint8)


def _fit(image: Image.Image, options: RenderOptions) -> Image.Image:
    """Crop to the requested region, flip if asked, scale to fit the viewport."""
    width, height = image.size
    if options.region is not None:
        x1, y1, x2, y2 = options.region
        box = (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise BadRequestError("region selects no pixel")
        image = image.crop(box)
    viewport = options.viewport
    if viewport is None:
        return image
    image = _source_region(image, viewport)
    width, height = image.size
    scales = [
        limit / side
        for limit, side in ((viewport.width, width), (viewport.height, height))
        if limit is not None
    ]
    if not scales:
        return image
    scale = min(scales)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return image.resize(size, method)


def _source_region(image: Image.Image, viewport: Viewport) -> Image.Image:
    width, height = image.size
    x, y = viewport.source_x, viewport.source_y
    region_width = viewport.source_width if viewport.source_width is not None else width - x
    region_height = viewport.source_height if viewport.source_height is not None else height - y
    left, right = sorted((x, x + region_width))
    top, bottom = sorted((y, y + region_height))
    if left < 0 or top < 0 or right > width or bottom > height or left == right or top == bottom:
        raise BadRequestError(
            f"viewport source region {left},{top}-{right},{bottom} is outside the "
            f"{width}x{height} image"
        )
    if (left, top, right, bottom) != (0, 0, width, height):
        image = image.crop((left, top, right, bottom))
    if region_width < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if region_height < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _attribute(header: dict[str, Any], frame_number: int, macro: str, tag: str) -> list[Any] | None:
    """Values of ``tag`` at the top level, else in the frame's or the shared functional
    group ``macro`` (PS3.3 C.7.6.16)."""
    values = header.get(tag, {}).get("Value")
    if values:
        return list(values)
    for group_tag, index in (("52009230", frame_number - 1), ("52009229", 0)):
        groups = header.get(group_tag, {}).get("Value") or []
        if not 0 <= index < len(groups):
            continue
        items = groups[index].get(macro, {}).get("Value") or []
        if items:
            values = items[0].get(tag, {}).get("Value")
            if values:
                return list(values)
    return None


def _number(values: list[Any] | None) -> float | None:
    """The first value as a number; None when absent or not numeric."""
    if not values:
        return None
    try:
        return float(values[0])
    except (TypeError, ValueError):
        return None


def _frame_time(header: dict[str, Any]) -> int | None:
    value = _number(header.get("00181063", {}).get("Value"))
    return max(10, round(value)) if value else None
