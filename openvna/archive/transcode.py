"""Re-encode a stored instance in another transfer syntax, for retrieval (PS3.18 8.7.3.5).

The archive keeps what was sent (ingest never re-encodes); a client that asks for a
different transfer syntax gets a transcoded copy. Lossless targets only: an archive must
not silently degrade an image, so lossy syntaxes are produced only when stored as such.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from openvna.errors import NotAcceptableError

EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
UNCOMPRESSED = frozenset(
    {str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian), str(ExplicitVRBigEndian)}
)
LOSSLESS_ENCODABLE = frozenset({str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless)})
"""Compressed syntaxes pydicom's encoders (pylibjpeg-rle, pyjpegls, openjpeg) write."""
PRODUCIBLE = frozenset({str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)}) | (
    LOSSLESS_ENCODABLE
)


def can_produce(stored_transfer_syntax: str, requested: str) -> bool:
    """Whether an instance stored in one syntax can be sent in ``requested``."""
    return requested == stored_transfer_syntax or requested in PRODUCIBLE


def transcode(source: BinaryIO, target_transfer_syntax: str) -> bytes:
    """The instance in ``source`` as a Part 10 file in ``target_transfer_syntax``.

    Raises
    ------
    NotAcceptableError
        The pixel data cannot be decoded (no codec installed) or encoded in the target.
    """
    target = UID(target_transfer_syntax)
    try:
        dataset = dcmread(source)
        stored = UID(str(dataset.file_meta.TransferSyntaxUID))
        has_pixels = "PixelData" in dataset
        if stored.is_compressed and has_pixels:
            dataset.decompress(generate_instance_uid=False)
        if target.is_compressed and has_pixels:
            dataset.compress(target, generate_instance_uid=False)
        else:
            dataset.file_meta.TransferSyntaxUID = target
        output = io.BytesIO()
        dataset.save_as(output, enforce_file_format=True)
    except NotAcceptableError:
        raise
    except Exception as error:  # codec missing, unsupported photometric, corrupt pixels
        raise NotAcceptableError(
            f"cannot transcode SOP Instance from {dataset_ts(source)} to "
            f"{target_transfer_syntax}: {error}"
        ) from error
    return output.getvalue()


def dataset_ts(source: BinaryIO) -> str:
    try:
        source.seek(0)
        return str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return "its stored transfer syntax"
