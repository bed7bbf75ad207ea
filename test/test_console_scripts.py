"""Every console script is installed and answers --help."""
from __future__ import annotations

import subprocess
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import pytest

SCRIPTS = sorted(ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith(("autoprune_ros",
                                                                                                  "autoprune_sim")))


def _script(name: str) -> Path:
    return Path(sysconfig.get_path("scripts")) / name


def test_the_commands_the_issues_name_exist() -> None:
    assert {"autoprune_node", "autoprune-replay", "autoprune-closed-loop", "autoprune-bench"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    exe = _script(script)
    assert exe.is_file(), f"{script} is not installed next to the interpreter"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
