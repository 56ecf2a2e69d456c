"""The settings table of docs/configuration.md is the code's settings, with the same defaults."""

from __future__ import annotations

import re

from pydantic import SecretStr

from taskproc.config import Settings

from support import ROOT

SETTINGS_PAGE = ROOT / "docs" / "configuration.md"


def _documented_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `(TASKPROC_[A-Z_]+)` \| (.+?) \| .+ \|$", SETTINGS_PAGE.read_text(), re.M)
    return dict(rows)


def test_every_setting_is_documented_with_its_default() -> None:
    documented = _documented_settings()
    expected: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        expected[f"TASKPROC_{name.upper()}"] = "(unset)" if default in ([], None) else f"`{default}`"
    assert documented == expected
