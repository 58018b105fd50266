"""deploy/findimage.service: the systemd unit docs/operations.md installs."""

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "findimage.service"
INSTALLED = "/opt/findimage"


def directives(text: str) -> dict[str, list[str]]:
    """{"Section.Key": [values]} of a unit file (keys may repeat, as in systemd)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key}"].append(value)
    return found


def test_unit_runs_the_bot_from_the_venv_hardened_with_state_and_secrets():
    unit = directives(UNIT.read_text())
    assert unit["Service.ExecStart"] == [f"{INSTALLED}/.venv/bin/python -m bot"]
    assert unit["Service.StateDirectory"] == ["findimage"]
    assert any("DATA_DIR=%S/findimage" in v for v in unit["Service.Environment"])
    assert unit["Service.EnvironmentFile"] == ["/etc/findimage/findimage.env"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]  # a wrong setting: no loop
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("DynamicUser", "yes"),
                      ("User", "findimage")):
        assert unit[f"Service.{key}"] == [want], key
    assert unit["Install.WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (Debian: apt-get install "
                           "systemd); the unit's directives are still checked above")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path):
    # verify also checks that ExecStart's program exists: point it at this venv's python.
    unit = UNIT.read_text().replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    path = tmp_path / "findimage.service"
    path.write_text(unit.replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on directives it cannot parse, and only says so: any output fails.
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr


def test_systemd_analyze_reports_a_broken_directive(tmp_path):
    """The check above can fail: a misspelt value is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = UNIT.read_text().replace(f"{INSTALLED}/.venv/bin/python", sys.executable)
    path = tmp_path / "findimage.service"
    path.write_text(unit.replace("ProtectSystem=strict", "ProtectSystem=strickt")
                    .replace(f"WorkingDirectory={INSTALLED}", f"WorkingDirectory={ROOT}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert "Failed to parse protect system value" in done.stderr
