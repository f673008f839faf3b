"""One frame between transfer syntaxes, for WADO-RS frames and rendering (PS3.18 8.7.3.5).

The archive keeps frames as they were sent. A client that wants them uncompressed gets
them decoded (pydicom's decoders with pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle,
pyjpegls, Pillow); a client that accepts only a compressed media type gets native frames
encoded where a lossless encoder exists (RLE Lossless, JPEG-LS Lossless, JPEG 2000
Lossless). Lossy syntaxes are never produced from other data: an archive must not
silently degrade an image. Everything here is CPU work: callers in async code use a thread.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from openvna.archive.pixels import EXPLICIT_VR_LITTLE_ENDIAN, FrameGeometry
from openvna.errors import NotAcceptableError

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
LOSSLESS_ENCODABLE = frozenset({RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS})
"""Compressed syntaxes this archive writes frames in (pydicom's lossless encoders)."""

_NOT_NATIVE_COLOUR = frozenset({"YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})
"""Photometric interpretations whose decoded frames cannot be written back natively in
the same interpretation: they come out as RGB (what decoders produce and viewers show)."""


def can_decode(transfer_syntax: str) -> bool:
    """Whether frames in ``transfer_syntax`` can be turned into pixels here."""
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(source_syntax: str, target_syntax: str) -> bool:
    """Whether a frame stored in ``source_syntax`` can be sent in ``target_syntax``."""
    if source_syntax == target_syntax:
        return True
    if target_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return can_decode(source_syntax)
    return target_syntax in LOSSLESS_ENCODABLE and can_decode(source_syntax)


def decode_frame(
    frame: bytes, transfer_syntax: str, geometry: FrameGeometry, *, as_rgb: bool = True
) -> np.ndarray:
    """The pixels of one frame: (rows, columns) or (rows, columns, samples).

    ``frame`` is native little endian when ``transfer_syntax`` is Explicit VR Little
    Endian, else the frame's codestream. With ``as_rgb`` YCbCr colour comes out RGB.

    Raises
    ------
    NotAcceptableError
        No decoder is installed for the syntax, or the codestream does not decode.
    """
    options: dict[str, Any] = {
        **geometry.pixel_options(),
        "as_rgb": as_rgb,
        "pixel_keyword": "PixelData",
    }
    try:
        if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
            decoder = get_decoder(UID(EXPLICIT_VR_LITTLE_ENDIAN))
            source = frame
        else:
            decoder = get_decoder(UID(transfer_syntax))
            source = encapsulate([frame])
        array, _ = decoder.as_array(source, index=0, **options)
    except (NotImplementedError, RuntimeError, ValueError) as error:
        raise NotAcceptableError(
            f"frames in transfer syntax {transfer_syntax} cannot be decoded here: {error}"
        ) from error
    return array


def native_frame(frame: bytes, transfer_syntax: str, geometry: FrameGeometry) -> bytes:
    """The frame as native little-endian bytes laid out as its header describes (PS3.5
    8.1.1): what ``application/octet-stream`` with Explicit VR Little Endian carries."""
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return frame
    as_rgb = geometry.photometric_interpretation in _NOT_NATIVE_COLOUR
    array = decode_frame(frame, transfer_syntax, geometry, as_rgb=as_rgb)
    width = max(1, geometry.bits_allocated // 8)
    kind = "i" if geometry.pixel_representation and array.dtype.kind == "i" else "u"
    array = array.astype(np.dtype(f"<{kind}{width}"), copy=False)
    if array.ndim == 3 and geometry.planar_configuration == 1:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array).tobytes()


def encode_frame(native: bytes, target_syntax: str, geometry: FrameGeometry) -> bytes:
    """Native little-endian frame bytes compressed in ``target_syntax`` (lossless only)."""
    if target_syntax not in LOSSLESS_ENCODABLE:
        raise NotAcceptableError(f"frames are not encoded in transfer syntax {target_syntax}")
    try:
        return bytes(get_encoder(UID(target_syntax)).encode(native, **geometry.pixel_options()))
    except (NotImplementedError, RuntimeError, ValueError) as error:
        raise NotAcceptableError(
            f"this image cannot be encoded in transfer syntax {target_syntax}: {error}"
        ) from error


def transcode_frame(
    frame: bytes, source_syntax: str, target_syntax: str, geometry: FrameGeometry
) -> bytes:
    """One frame from ``source_syntax`` (as :meth:`PixelStore.read_frames` gives it) to
    ``target_syntax``; the bytes unchanged when both are the same."""
    if source_syntax == target_syntax:
        return frame
    native = native_frame(frame, source_syntax, geometry)
    if target_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return native
    if source_syntax != EXPLICIT_VR_LITTLE_ENDIAN and (
        geometry.photometric_interpretation in _NOT_NATIVE_COLOUR
    ):
        geometry = replace(geometry, photometric_interpretation="RGB")
    return encode_frame(native, target_syntax, geometry)
