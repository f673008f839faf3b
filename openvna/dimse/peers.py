"""Known remote application entities: from the settings and from ``peers.json``.

``openvna peers add`` writes ``peers.json`` in the data directory (atomically); a running
server notices the replaced file on its next lookup, so peers take effect without a
restart.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from openvna.config import PeerConfig


class PeerRegistry:
    def __init__(self, configured: list[PeerConfig], peers_file: Path) -> None:
        self._configured = {peer.ae_title: peer for peer in configured}
        self._file = peers_file
        self._lock = threading.Lock()
        self._loaded: tuple[int, int, int] | None = None
        """(inode, size, mtime) of the file last read: each write replaces the file."""
        self._dynamic: dict[str, PeerConfig] = {}

    def _refresh(self) -> None:
        try:
            stat = self._file.stat()
        except FileNotFoundError:
            self._dynamic, self._loaded = {}, None
            return
        # The modification time alone misses a second write within the file system's
        # timestamp granularity (a jiffy on many kernels); the replaced file's inode differs.
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._loaded:
            return
        entries = json.loads(self._file.read_text(encoding="utf-8") or "[]")
        self._dynamic = {e["ae_title"]: PeerConfig.model_validate(e) for e in entries}
        self._loaded = signature

    def all(self) -> list[PeerConfig]:
        with self._lock:
            self._refresh()
            merged = dict(self._configured)
            merged.update(self._dynamic)
        return sorted(merged.values(), key=lambda peer: peer.ae_title)

    def get(self, ae_title: str) -> PeerConfig | None:
        ae_title = ae_title.strip()
        for peer in self.all():
            if peer.ae_title == ae_title:
                return peer
        return None

    def add(self, peer: PeerConfig) -> None:
        with self._lock:
            self._refresh()
            self._dynamic[peer.ae_title] = peer
            self._write()

    def remove(self, ae_title: str) -> bool:
        with self._lock:
            self._refresh()
            removed = self._dynamic.pop(ae_title, None) is not None
            if removed:
                self._write()
        return removed

    def is_configured_only(self, ae_title: str) -> bool:
        return ae_title in self._configured and ae_title not in self._dynamic

    def _write(self) -> None:
        self._file.parent.mkdir(parents=True, exist_ok=True)
        temp = self._file.with_suffix(".tmp")
        payload = [peer.model_dump() for peer in self._dynamic.values()]
        temp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, self._file)
        self._loaded = None
