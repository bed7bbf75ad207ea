"""The launch file names only executables, files and parameters that exist (launch_ros is not installable here)."""
from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from autoprune_ros.ros.parameters import PARAMETERS

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "autoprune.launch.py"


def _calls(name: str) -> list[ast.Call]:
    tree = ast.parse(LAUNCH.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_node_executable_and_package_exist() -> None:
    (node,) = _calls("Node")
    kwargs = {k.arg: k.value for k in node.keywords}
    assert kwargs["package"].value == "autoprune_ros"
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert kwargs["executable"].value in scripts


def test_parameters_it_sets_are_node_parameters() -> None:
    (node,) = _calls("Node")
    params = next(k.value for k in node.keywords if k.arg == "parameters")
    overrides = next(e for e in params.elts if isinstance(e, ast.Dict))
    names = {k.value for k in overrides.keys}
    assert names <= set(PARAMETERS) | {"use_sim_time"}


def test_default_params_file_exists_and_matches_the_node() -> None:
    defaults = [c for c in _calls("DeclareLaunchArgument") if c.args[0].value == "params_file"]
    join = next(k.value for k in defaults[0].keywords if k.arg == "default_value")
    rel = Path(*[a.value for a in join.args[1:]])
    config = yaml.safe_load((REPO / rel).read_text())
    assert set(config["/**"]["ros__parameters"]) <= set(PARAMETERS)
    for name, value in config["/**"]["ros__parameters"].items():
        assert type(value) is type(PARAMETERS[name].default), f"{name}: {value!r} has the wrong type"


def test_camera_remap_targets_the_node_default_camera() -> None:
    tree = ast.parse(LAUNCH.read_text())
    default = next(n.value.value for n in tree.body
                   if isinstance(n, ast.Assign) and n.targets[0].id == "DEFAULT_CAMERA")
    assert default == PARAMETERS["camera_topics"].default[0]
