"""Sending a stored data set as P-DATA-TF PDUs straight from its file.

pynetdicom turns every fragment of a data set into a P-DATA primitive that travels
through the DUL queue and state machine and is encoded as a PDU object: more than
100 µs of Python per PDU, so C-GET and C-MOVE of a CT study (16 KB PDUs for dcmtk's
default) moved under 100 MB/s. Here the whole data set is one primitive,
:class:`FileDataSet`, queued after the command set like any P-DATA, so the DUL thread
sends it in order (the state machine sees one P-DATA request, as for any fragment);
when it does, the PDUs (PS3.8 9.3.5: type 04H, PDU length, then one PDV item with the
message control header 00H or, on the last fragment, 02H) are written from the file in
blocks of about a megabyte. The bytes on the wire are those pynetdicom would have sent.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pynetdicom.association as pynetdicom_association
import pynetdicom.fsm as pynetdicom_fsm
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

_BLOCK_BYTES = 1024 * 1024
_PDU_HEADER = struct.Struct(">BBIIBB")
"""PDU type, reserved, PDU length; PDV item length, context ID, message control header."""
_PLAINTEXT_PREFIX = "openvna-plaintext:"
_PLAINTEXT_SOURCES: dict[str, Callable[[], BinaryIO]] = {}
"""Names standing for stored instances without a plaintext file (encrypted storage)."""


@contextmanager
def plaintext_source(opener: Callable[[], BinaryIO]) -> Iterator[str]:
    """A name to send from as if it were a file, read through ``opener`` (decrypted as
    it goes, never written out) while the ``with`` block lasts. A send that outlives it
    fails instead of reading something else under a recycled name."""
    name = f"{_PLAINTEXT_PREFIX}{uuid.uuid4().hex}"
    _PLAINTEXT_SOURCES[name] = opener
    try:
        yield name
    finally:
        _PLAINTEXT_SOURCES.pop(name, None)


def open_source(path: str | os.PathLike[str]) -> BinaryIO:
    """The file at ``path``, or the stream a :func:`plaintext_source` name stands for."""
    name = os.fspath(path)
    if name.startswith(_PLAINTEXT_PREFIX):
        opener = _PLAINTEXT_SOURCES.get(name)
        if opener is None:
            raise OSError(f"{name}: the send it belonged to has ended")
        return opener()
    return open(name, "rb")


def _split_dataset(path: Path) -> tuple[Dataset, int]:
    """pynetdicom's ``split_dataset`` (File Meta and the data set's offset), reading
    through :func:`open_source`."""
    with open_source(path) as source:
        read_preamble(source, False)
        file_meta = read_dataset(
            source,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != 2,
        )
        return file_meta, source.tell()


class FileDataSet(P_DATA):
    """A P-DATA request standing for every data set fragment of one stored file."""

    def __init__(self, path: str, offset: int, context_id: int, max_pdu: int) -> None:
        super().__init__()
        self.path = path
        self.offset = offset
        self.context_id = context_id
        self.fragment_bytes = max_pdu - 6  # as pynetdicom: PDU length == max PDU


def pdus_of(data_set: FileDataSet) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of the file's data set, grouped into blocks of about 1 MB."""
    fragment = data_set.fragment_bytes
    with open_source(data_set.path) as source:
        remaining = source.seek(0, os.SEEK_END) - data_set.offset
        source.seek(data_set.offset)
        fragments_per_block = max(1, _BLOCK_BYTES // fragment)
        while True:
            block = bytearray()
            for _ in range(fragments_per_block):
                size = min(fragment, remaining)
                remaining -= size
                control = 0x02 if remaining == 0 else 0x00
                block += _PDU_HEADER.pack(0x04, 0, size + 6, size + 2, data_set.context_id, control)
                chunk = source.read(size)
                if len(chunk) != size:
                    raise OSError(f"{data_set.path} changed while being sent")
                block += chunk
                if remaining == 0:
                    yield bytes(block)
                    return
            yield bytes(block)


class _FileDataSetPdu:
    """What DT-1 hands to ``DULServiceProvider._send`` for a :class:`FileDataSet`."""

    def __init__(self, data_set: FileDataSet) -> None:
        self.data_set = data_set


def install() -> None:
    """Route :class:`FileDataSet` through pynetdicom's DUL (idempotent, process-wide)."""
    if getattr(DULServiceProvider, "_openvna_file_data_sets", False):
        return
    pdu_class = P_DATA_TF

    def p_data_tf(primitive: Any) -> Any:
        if isinstance(primitive, FileDataSet):
            return _FileDataSetPdu(primitive)
        return pdu_class(primitive)

    pynetdicom_fsm.P_DATA_TF = p_data_tf  # type: ignore[attr-defined,assignment]
    pynetdicom_association.split_dataset = _split_dataset  # type: ignore[attr-defined]

    original_send = DULServiceProvider._send

    def send(self: DULServiceProvider, pdu: Any) -> None:
        if not isinstance(pdu, _FileDataSetPdu):
            original_send(self, pdu)
            return
        if self.socket is None or self.socket.socket is None:
            return
        try:
            for block in pdus_of(pdu.data_set):
                self.socket.socket.sendall(block)
        except Exception:
            self.event_queue.put("Evt17")  # as AssociationSocket.send: connection lost

    DULServiceProvider._send = send  # type: ignore[method-assign]

    original_encode: Callable[..., Iterator[P_DATA]] = DIMSEMessage.encode_msg

    def encode_msg(self: DIMSEMessage, context_id: int, max_pdu_length: int) -> Iterator[P_DATA]:
        source = self._data_set_path
        path, offset = source if isinstance(source, tuple) else (Path(source or ""), 0)
        plaintext = str(path).startswith(_PLAINTEXT_PREFIX)  # pynetdicom cannot open it
        if source is None or (not plaintext and (not max_pdu_length or max_pdu_length < 64)):
            yield from original_encode(self, context_id, max_pdu_length)
            return
        self._data_set_path = None
        try:
            yield from original_encode(self, context_id, max_pdu_length)  # the command set
        finally:
            self._data_set_path = source
        yield FileDataSet(str(path), offset, context_id, max_pdu_length or _BLOCK_BYTES)

    DIMSEMessage.encode_msg = encode_msg  # type: ignore[method-assign]
    DULServiceProvider._openvna_file_data_sets = True  # type: ignore[attr-defined]
