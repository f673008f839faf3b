"""Shared by the attack tests (limits, path traversal and injection, fuzzing): a count
of the attack cases each test ran, printed where ``pytest -q`` shows it, so that the
closing note of issue #5 can quote them."""

from __future__ import annotations

import contextlib

import pytest


def report_cases(request: pytest.FixtureRequest, count: int) -> None:
    """Print ``ATTACK-CASES <test>: <count>`` past pytest's output capture."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nATTACK-CASES {request.node.name}: {count}")
