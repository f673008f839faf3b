"""Sending stored instances as a C-STORE SCU, byte for byte and without decoding.

pynetdicom's retrieve machinery only accepts ``Dataset`` objects from a C-GET/C-MOVE
handler and would decode and re-encode each one. :class:`StoredInstanceRef` is a
``Dataset`` that only carries the identity of a stored file; :func:`install_raw_send`
wraps ``Association.send_c_store`` so that such a reference is sent from its file in
chunks (``STORE_SEND_CHUNKED_DATASET``): the data set bytes go out exactly as stored.
When the peer accepted no presentation context with the stored transfer syntax, the
file is decoded and pynetdicom converts between the uncompressed syntaxes.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, BinaryIO

import pynetdicom.association as pynetdicom_association
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AssociationSocket

from openvna.dimse import pdata_stream
from openvna.index.search import RetrievableInstance

logger = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


_READ_BEFORE_SENDING = 64 * 1024 * 1024
"""Stored instances without a file up to this size are read whole before being sent."""


class StoredInstanceRef(Dataset):
    """A stored instance to send: its identity, and the path of its Part 10 file, or
    (encrypted storage: no plaintext file) how to open its plaintext."""

    def __init__(
        self,
        instance: RetrievableInstance,
        path: str | None,
        opener: Callable[[], BinaryIO] | None = None,
    ) -> None:
        super().__init__()
        self.SOPClassUID = instance.sop_class_uid
        self.SOPInstanceUID = instance.sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(instance.transfer_syntax_uid)
        self.openvna_path = path
        self.openvna_opener = opener

    @contextmanager
    def source(self) -> Iterator[str]:
        """A path to send from while the send runs (see ``pdata_stream.plaintext_source``).

        Without a file, an instance up to :data:`_READ_BEFORE_SENDING` bytes is read (and
        its integrity checked) before the C-STORE starts: a damaged one fails its
        sub-operation cleanly instead of aborting the association halfway through.
        """
        if self.openvna_path is not None:
            yield self.openvna_path
            return
        if self.openvna_opener is None:
            raise ValueError("a stored instance reference needs a path or an opener")
        opener = self.openvna_opener
        with opener() as stored:
            if stored.seek(0, io.SEEK_END) <= _READ_BEFORE_SENDING:
                stored.seek(0)
                data = stored.read()
                opener = partial(io.BytesIO, data)
        with pdata_stream.plaintext_source(opener) as name:
            yield name


_installed = False
_REACTOR_SLEEP_CAP = 0.0005
"""Longest sleep of pynetdicom's association reactor loop (its own is 1 ms)."""


class _ShortSleepTime:
    """The ``time`` module as pynetdicom.association sees it, with sleeps capped.

    pynetdicom's association reactor polls its message queue with a fixed
    ``time.sleep(0.001)``; every received C-STORE waits up to that long before its
    handler runs, which alone caps one association near 120 instances a second. An idle
    association then wakes 2000 times a second instead of 1000, a small price.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, _REACTOR_SLEEP_CAP))


def pause_reactor(assoc: Association) -> None:
    """Stop ``assoc``'s reactor thread before a send from another thread.

    pynetdicom pauses its reactor by clearing ``_reactor_checkpoint`` and waiting for
    ``_is_paused``; but the reactor sets that flag just before waiting on the checkpoint on
    every loop, so the sender can see it set while the reactor is already past the wait.
    The reactor then takes the C-STORE response for itself ("unexpected C-STORE service
    message") and the sender waits out the DIMSE timeout (seen on C-MOVE under load).
    Here the sender waits until the reactor thread is really blocked on the checkpoint;
    pynetdicom's own check that follows then passes at once. A send from the reactor
    thread itself (C-GET sub-operations) needs no pause.
    """
    if threading.current_thread() is assoc or not assoc.is_alive():
        return
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    waiters = checkpoint._cond._waiters  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10.0
    while not (assoc._is_paused and waiters) and not assoc.is_aborted:
        if not assoc.is_alive() or time.monotonic() > deadline:
            return  # pynetdicom's own checks report the dead association
        time.sleep(0.0001)


def install_raw_send() -> None:
    """Patch pynetdicom once per process (idempotent): raw sends (see the module
    docstring), TCP_NODELAY on outgoing sockets, shorter reactor polling."""
    global _installed
    if _installed:
        return
    _config.STORE_SEND_CHUNKED_DATASET = True
    original = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        pause_reactor(self)
        if isinstance(dataset, StoredInstanceRef):
            try:
                with dataset.source() as path:
                    try:
                        return original(self, path, *args, **kwargs)
                    except ValueError:
                        # No context with the stored transfer syntax: decode and let
                        # pynetdicom convert (uncompressed) or decompress first.
                        with pdata_stream.open_source(path) as stored:
                            decoded = dcmread(stored)
                        if decoded.file_meta.TransferSyntaxUID.is_compressed:
                            # same instance in another syntax: keep its SOP Instance UID
                            decoded.decompress(generate_instance_uid=False)
                        return original(self, decoded, *args, **kwargs)
            except Exception:
                # an unreadable object fails this sub-operation; the reactor runs on
                self._reactor_checkpoint.set()
                raise
        return original(self, dataset, *args, **kwargs)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]

    original_create_socket = AssociationSocket._create_socket

    def create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original_create_socket(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]
    pynetdicom_association.time = _ShortSleepTime()  # type: ignore[attr-defined,assignment]
    pdata_stream.install()
    _installed = True


def contexts_for(instances: Iterable[RetrievableInstance]) -> list[PresentationContext]:
    """Presentation contexts for sending ``instances`` as they are stored.

    Each stored transfer syntax gets a context of its own, so the peer can accept it
    exactly instead of choosing a syntax that forces a conversion; one more context per
    SOP class offers the uncompressed syntaxes as a fallback. At most 128 contexts fit an
    association (PS3.8 9.3.2.2: odd IDs 1-255).
    """
    pairs: dict[str, list[str]] = {}
    for instance in instances:
        stored = pairs.setdefault(instance.sop_class_uid, [])
        if instance.transfer_syntax_uid not in stored:
            stored.append(instance.transfer_syntax_uid)
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in pairs.items():
        for syntax in syntaxes:
            contexts.append(build_context(sop_class, [syntax]))
        contexts.append(build_context(sop_class, list(UNCOMPRESSED_SYNTAXES)))
    return contexts[:128]
