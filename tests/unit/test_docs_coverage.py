"""The documentation keeps up with the code: every command, every setting, every link."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from openvna.cli.main import app
from openvna.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    # typer may vendor its own click: walk by the ``commands`` mapping, not by class
    for name, command in (getattr(group, "commands", None) or {}).items():
        path = (*prefix, name)
        yield " ".join(path)
        yield from _commands(command, path)


def _options(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(command path, long option) for every option of every command, --help excepted."""
    for param in getattr(group, "params", ()):
        for option in (*param.opts, *getattr(param, "secondary_opts", ())):
            if option.startswith("--") and option != "--help":
                yield " ".join(prefix), option
    for name, command in (getattr(group, "commands", None) or {}).items():
        yield from _options(command, (*prefix, name))


def _section(text: str, command: str) -> str:
    """The part of cli.md under the heading of ``openvna <command>`` (whole text for root)."""
    if not command:
        return text
    heading = re.compile(rf"^(#+) `openvna {re.escape(command)}[ `]", re.MULTILINE)
    match = heading.search(text)
    if match is None:
        return ""
    level = len(match.group(1))
    following = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, match.end())
    return text[match.start() : following.start() if following else len(text)]


def _env_name(setting: str) -> str:
    return "OPENVNA_" + setting.upper().replace(".", "__")


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        yield dotted
        for candidate in _model_types(field.annotation):
            yield from _fields(candidate, f"{dotted}.")


def _model_types(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for argument in getattr(annotation, "__args__", ()):  # list[PeerConfig], X | None
        yield from _model_types(argument)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


COMMANDS = sorted(set(_commands(typer.main.get_command(app))))
OPTIONS = sorted(set(_options(typer.main.get_command(app))))
FIELDS = sorted(set(_fields(Settings)))
# Settings an environment variable sets: leaves and whole lists, not sections or list items
# Settings that are lists of tables: documented item by item as `dimse.peers[].host`,
# set from the environment as a whole JSON list.
LIST_SETTINGS = ("dimse.peers", "security.access_rules", "security.dicom_aes")


def _item_form(setting: str) -> str:
    for listed in LIST_SETTINGS:
        if setting.startswith(f"{listed}."):
            return listed + "[]" + setting[len(listed) :]
    return setting


ENV_SETTINGS = [
    name
    for name in FIELDS
    if not any(name.startswith(f"{listed}.") for listed in LIST_SETTINGS)
    and not any(other.startswith(f"{name}.") for other in FIELDS)
] + list(LIST_SETTINGS)


def test_the_walks_find_something() -> None:
    assert {"serve", "import", "verify", "peers add", "samples load"} <= set(COMMANDS)
    assert {"data_dir", "dimse.max_pdu", "dimse.processes", "dimse.peers.host"} <= set(FIELDS)
    assert {("serve", "--dicom-port"), ("samples generate", "--small")} <= set(OPTIONS)
    assert {"dimse.max_pdu", "ingest.duplicate_policy"} <= set(ENV_SETTINGS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_documented(command: str) -> None:
    assert f"openvna {command}" in (DOCS / "cli.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("command", "option"), OPTIONS)
def test_every_option_is_documented_under_its_command(command: str, option: str) -> None:
    section = _section((DOCS / "cli.md").read_text(encoding="utf-8"), command)
    assert section, f"docs/cli.md has no heading for `openvna {command}`"
    assert option in section, f"`openvna {command} {option}` is not documented"


@pytest.mark.parametrize("setting", FIELDS)
def test_every_setting_is_documented(setting: str) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    # in backticks; list items as dimse.peers[].host; sections as `dimse.*` or [dimse]
    forms = (f"`{_item_form(setting)}`", f"`{setting}.*`", f"[{setting}]")
    assert any(form in text for form in forms), f"{setting} is not documented"


@pytest.mark.parametrize("setting", ENV_SETTINGS)
def test_every_environment_variable_is_documented(setting: str) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert re.search(rf"\b{_env_name(setting)}\b", text), f"{_env_name(setting)} missing"


@pytest.mark.parametrize("document", _markdown_files(), ids=lambda path: path.name)
def test_relative_links_point_to_existing_files(document: Path) -> None:
    missing = []
    for target in _LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URL or same-page anchor
        path = target.split("#", 1)[0]
        if path and not (document.parent / path).exists():
            missing.append(target)
    assert not missing, f"{document.name} links to missing files: {missing}"
