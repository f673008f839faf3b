"""Settings sources and their priority: defaults < TOML file < OPENVNA_* env < CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from openvna.config import DuplicatePolicy, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.upper().startswith("OPENVNA_"):
            monkeypatch.delenv(name)
    yield


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.dimse.ae_title == "OPENVNA"
    assert settings.dimse.port == 11112
    assert settings.http.port == 8042
    assert settings.ingest.duplicate_policy is DuplicatePolicy.REJECT
    assert settings.data_dir == Path("var")


def test_toml_file(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "openvna.toml",
        f"""
data_dir = "{tmp_path / "data"}"
stable_after = 5.5

[dimse]
ae_title = "ARCHIVE1"
port = 11113

[[dimse.peers]]
ae_title = "MODALITY"
host = "10.0.0.2"
port = 104

[ingest]
duplicate_policy = "keep-both"
""",
    )
    settings = load_settings(config)
    assert settings.data_dir == tmp_path / "data"
    assert settings.stable_after == 5.5
    assert settings.dimse.ae_title == "ARCHIVE1"
    assert settings.dimse.port == 11113
    assert settings.dimse.max_pdu == 65536  # unset keys keep their defaults
    assert [(p.ae_title, p.host, p.port) for p in settings.dimse.peers] == [
        ("MODALITY", "10.0.0.2", 104)
    ]
    assert settings.ingest.duplicate_policy is DuplicatePolicy.KEEP_BOTH
    assert settings.index_url == f"sqlite:///{(tmp_path / 'data' / 'index.sqlite').resolve()}"
    assert settings.peers_file == tmp_path / "data" / "peers.json"
    # the file applies to that one construction only
    assert load_settings().dimse.ae_title == "OPENVNA"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(
        tmp_path / "c.toml",
        '[dimse]\nae_title = "FROMFILE"\nport = 2000\n[http]\nport = 3000\n',
    )
    monkeypatch.setenv("OPENVNA_DIMSE__PORT", "4000")
    monkeypatch.setenv("OPENVNA_INGEST__DUPLICATE_POLICY", "overwrite")
    monkeypatch.setenv("OPENVNA_HOST", "0.0.0.0")
    settings = load_settings(config)
    assert settings.dimse.port == 4000
    assert settings.dimse.ae_title == "FROMFILE"  # not overridden: the file still applies
    assert settings.http.port == 3000
    assert settings.ingest.duplicate_policy is DuplicatePolicy.OVERWRITE
    assert settings.host == "0.0.0.0"


def test_environment_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENVNA_DIMSE__AE_TITLE", "ENVAE")
    monkeypatch.setenv("OPENVNA_STABLE_AFTER", "7")
    settings = load_settings()
    assert settings.dimse.ae_title == "ENVAE"
    assert settings.stable_after == 7.0


def test_cli_overrides_beat_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_toml(
        tmp_path / "c.toml",
        '[dimse]\nae_title = "FROMFILE"\nport = 2000\nmax_pdu = 16384\n',
    )
    monkeypatch.setenv("OPENVNA_DIMSE__PORT", "4000")
    monkeypatch.setenv("OPENVNA_DIMSE__AE_TITLE", "FROMENV")
    settings = load_settings(
        config,
        **{"dimse.port": 5000, "http.port": None, "data_dir": tmp_path / "cli"},
    )
    assert settings.dimse.port == 5000
    assert settings.dimse.ae_title == "FROMENV"  # env beats file where the CLI is silent
    assert settings.dimse.max_pdu == 16384  # nested CLI keys merge with file sections
    assert settings.http.port == 8042  # None means "not given"
    assert settings.data_dir == tmp_path / "cli"


def test_invalid_values_are_validation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "   ", "A" * 17, "BAD\\AE"):
        with pytest.raises(ValidationError, match="AE title"):
            load_settings(**{"dimse.ae_title": bad})
    for port in (-1, 65536):
        with pytest.raises(ValidationError, match="port"):
            load_settings(**{"dimse.port": port})
    with pytest.raises(ValidationError):
        load_settings(**{"ingest.duplicate_policy": "ignore"})
    monkeypatch.setenv("OPENVNA_HTTP__PORT", "70000")
    with pytest.raises(ValidationError):
        load_settings()


def test_ae_title_is_stripped() -> None:
    assert load_settings(**{"dimse.ae_title": "  SPACED  "}).dimse.ae_title == "SPACED"


def test_invalid_value_in_file_is_a_validation_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "c.toml", '[dimse]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n')
    with pytest.raises(ValidationError):
        load_settings(config)


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "c.toml", "no_such_setting = 1\n")
    with pytest.raises(ValidationError):
        load_settings(config)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(FileNotFoundError, match=r"absent\.toml"):
        load_settings(missing)


def test_settings_class_direct_construction() -> None:
    settings = Settings(database_url="postgresql://db/openvna")
    assert settings.index_url == "postgresql://db/openvna"


@pytest.mark.parametrize(
    ("section", "key"), [("dimse", "ae_tilte"), ("http", "prot"), ("ingest", "duplicate_polcy")]
)
def test_unknown_keys_in_a_section_are_rejected(tmp_path: Path, section: str, key: str) -> None:
    """A mistyped key in a section must not be ignored, leaving the default in force."""
    config = write_toml(tmp_path / "c.toml", f'[{section}]\n{key} = "x"\n')
    with pytest.raises(ValidationError) as caught:
        load_settings(config)
    errors = caught.value.errors()
    assert [(error["loc"], error["type"]) for error in errors] == [
        ((section, key), "extra_forbidden")
    ]


def test_unknown_nested_environment_variable_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENVNA_INGEST__DUPLICATE_POLCY", "overwrite")
    with pytest.raises(ValidationError, match=r"ingest\.duplicate_polcy"):
        load_settings()


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\AE", "TAB\tAE"])
def test_peer_ae_title_is_validated_like_our_own(title: str) -> None:
    from openvna.config import PeerConfig

    with pytest.raises(ValueError, match="AE title"):
        PeerConfig(ae_title=title, host="127.0.0.1", port=104)
    assert PeerConfig(ae_title=" STORESCP ", host="127.0.0.1", port=104).ae_title == "STORESCP"
