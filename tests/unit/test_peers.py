"""PeerRegistry: peers added at run time persist in peers.json and reach other processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from openvna.config import PeerConfig
from openvna.dimse.peers import PeerRegistry

CONFIGURED = PeerConfig(ae_title="PACS", host="10.0.0.1", port=104)


def titles(registry: PeerRegistry) -> list[str]:
    return [peer.ae_title for peer in registry.all()]


def test_add_persists_and_a_second_registry_sees_it(tmp_path: Path) -> None:
    peers_file = tmp_path / "data" / "peers.json"
    writer = PeerRegistry([CONFIGURED], peers_file)
    assert titles(writer) == ["PACS"]
    writer.add(PeerConfig(ae_title="WS1", host="ws1.local", port=11112))
    writer.add(PeerConfig(ae_title="CT", host="10.0.0.5", port=104))
    assert titles(writer) == ["CT", "PACS", "WS1"]  # sorted, configured ones included
    stored = json.loads(peers_file.read_text(encoding="utf-8"))
    assert {entry["ae_title"] for entry in stored} == {"WS1", "CT"}  # configured not written
    assert not peers_file.with_suffix(".tmp").exists()

    reader = PeerRegistry([], peers_file)
    assert titles(reader) == ["CT", "WS1"]
    assert reader.get("WS1") == PeerConfig(ae_title="WS1", host="ws1.local", port=11112)
    assert reader.get("  CT ") is not None
    assert reader.get("PACS") is None


def test_remove_persists(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.json"
    first = PeerRegistry([], peers_file)
    first.add(PeerConfig(ae_title="A", host="a", port=1))
    first.add(PeerConfig(ae_title="B", host="b", port=2))
    second = PeerRegistry([], peers_file)
    assert titles(second) == ["A", "B"]
    assert first.remove("A") is True
    assert first.remove("A") is False
    assert titles(second) == ["B"]  # the other instance notices the new file
    assert [e["ae_title"] for e in json.loads(peers_file.read_text())] == ["B"]
    assert titles(PeerRegistry([], peers_file)) == ["B"]


def test_add_replaces_a_peer_with_the_same_title(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.json"
    registry = PeerRegistry([], peers_file)
    registry.add(PeerConfig(ae_title="A", host="old", port=1))
    other = PeerRegistry([], peers_file)
    assert titles(other) == ["A"]
    registry.add(PeerConfig(ae_title="A", host="new", port=2))
    assert other.get("A") == PeerConfig(ae_title="A", host="new", port=2)
    assert len(json.loads(peers_file.read_text())) == 1


def test_additions_from_two_registries_are_both_kept(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.json"
    left = PeerRegistry([], peers_file)
    right = PeerRegistry([], peers_file)
    assert titles(left) == titles(right) == []
    left.add(PeerConfig(ae_title="LEFT", host="l", port=1))
    right.add(PeerConfig(ae_title="RIGHT", host="r", port=2))
    assert titles(PeerRegistry([], peers_file)) == ["LEFT", "RIGHT"]


def test_dynamic_peer_overrides_configured_one(tmp_path: Path) -> None:
    registry = PeerRegistry([CONFIGURED], tmp_path / "peers.json")
    assert registry.is_configured_only("PACS")
    registry.add(PeerConfig(ae_title="PACS", host="10.9.9.9", port=4242))
    assert not registry.is_configured_only("PACS")
    assert registry.get("PACS") == PeerConfig(ae_title="PACS", host="10.9.9.9", port=4242)
    assert registry.remove("PACS") is True
    assert registry.get("PACS") == CONFIGURED  # the configured one is back
    assert registry.remove("PACS") is False  # configured peers cannot be removed


def test_deleted_file_means_no_dynamic_peers(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.json"
    registry = PeerRegistry([], peers_file)
    registry.add(PeerConfig(ae_title="A", host="a", port=1))
    peers_file.unlink()
    assert titles(registry) == []


def test_peer_port_is_validated() -> None:
    with pytest.raises(ValidationError):
        PeerConfig(ae_title="X", host="x", port=0)
    with pytest.raises(ValidationError):
        PeerConfig(ae_title="X", host="x", port=65536)


def test_a_rewrite_within_the_same_timestamp_is_seen(tmp_path: Path) -> None:
    """Two writes inside the file system's timestamp granularity leave one mtime.

    Kernels with coarse file timestamps (a jiffy) give both writes the same mtime; the
    other registry must still read the second one.
    """
    peers_file = tmp_path / "peers.json"
    writer = PeerRegistry([], peers_file)
    reader = PeerRegistry([], peers_file)
    writer.add(PeerConfig(ae_title="A", host="a", port=1))
    first = peers_file.stat()
    assert titles(reader) == ["A"]
    writer.add(PeerConfig(ae_title="B", host="b", port=2))
    os.utime(peers_file, ns=(first.st_atime_ns, first.st_mtime_ns))  # as a coarse clock would
    assert peers_file.stat().st_mtime_ns == first.st_mtime_ns
    assert titles(reader) == ["A", "B"]
