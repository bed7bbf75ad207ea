"""The closed-loop launch files name only executables, bridge options, parameters and files that exist.

Checked statically with `ast` (launch/launch_ros are not installable here). The bridges' options come from their
own `--help`: the MetaDrive bridge's from the simulator environment, the CARLA bridge's from this one.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from autoprune_ros.ros.parameters import PARAMETERS

REPO = Path(__file__).resolve().parent.parent
SIM_PYTHON = REPO / ".venv-sim" / "bin" / "python"
EXAMPLE_ROUTES = REPO / "sim" / "routes" / "example_town01.xml"
LAUNCHES = {
    "metadrive": (REPO / "launch" / "closed_loop_metadrive.launch.py", "autoprune_sim.metadrive_bridge"),
    "carla": (REPO / "launch" / "closed_loop_carla.launch.py", "autoprune_sim.carla_bridge"),
}
# Values for launch arguments without a default, used where the bridge command is rendered with its defaults.
REQUIRED_VALUES = {"routes": str(EXAMPLE_ROUTES)}
both = pytest.mark.parametrize("sim", sorted(LAUNCHES))


@cache
def _tree(sim: str) -> ast.Module:
    return ast.parse(LAUNCHES[sim][0].read_text())


def _calls(sim: str, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(_tree(sim)) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords}


def _declared(sim: str) -> dict[str, ast.expr | None]:
    """Launch argument name -> its default_value expression (None: a required argument)."""
    return {c.args[0].value: _kwargs(c).get("default_value") for c in _calls(sim, "DeclareLaunchArgument")}


def _config_name(node: ast.expr) -> str | None:
    """The argument name of a `LaunchConfiguration("name")`, else None."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LaunchConfiguration":
        return node.args[0].value
    return None


def _bridge_cmd(sim: str) -> list[ast.expr]:
    (bridge,) = _calls(sim, "ExecuteProcess")
    cmd = _kwargs(bridge)["cmd"]
    assert isinstance(cmd, ast.List), "the bridge command is a literal list"
    return cmd.elts


def _rendered_args(sim: str) -> list[str]:
    """The bridge's arguments (after `python -m module`) with every launch argument at its default."""
    declared = _declared(sim)
    out = []
    for element in _bridge_cmd(sim)[3:]:
        if isinstance(element, ast.Constant):
            out.append(element.value)
            continue
        name = _config_name(element)
        assert name is not None, f"{ast.unparse(element)}: only literals and LaunchConfiguration in the command"
        default = declared[name]
        if default is None:
            out.append(REQUIRED_VALUES[name])
        else:
            assert isinstance(default, ast.Constant), f"{name}: the default of a bridge option is a literal"
            out.append(default.value)
    return out


def _bridge_python(sim: str) -> Path:
    if sim == "carla":
        return Path(sys.executable)  # the carla client is installed in the main environment
    if not SIM_PYTHON.exists():
        if os.environ.get("AUTOPRUNE_REQUIRE_SIM") == "1":
            pytest.fail(".venv-sim is missing although AUTOPRUNE_REQUIRE_SIM=1: run `make setup-sim`")
        pytest.skip("cannot check the MetaDrive bridge's options: .venv-sim not built (make setup-sim)")
    return SIM_PYTHON


@cache
def _help(sim: str, python: Path, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m bridge [args] --help`: argparse checks `args` (types, choices) before it prints the help."""
    env = dict(os.environ, AMENT_PREFIX_PATH=str(SIM_PYTHON.parent.parent)) if sim == "metadrive" else None
    return subprocess.run([str(python), "-m", LAUNCHES[sim][1], *args, "--help"], capture_output=True, text=True,
                          timeout=60, env=env)


@both
def test_node_executable_exists_and_runs_on_sim_time(sim: str) -> None:
    (node,) = _calls(sim, "Node")
    kwargs = _kwargs(node)
    assert kwargs["package"].value == "autoprune_ros"
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert kwargs["executable"].value == "autoprune_node" and "autoprune_node" in scripts
    overrides = next(e for e in kwargs["parameters"].elts if isinstance(e, ast.Dict))
    values = {k.value: v.value for k, v in zip(overrides.keys, overrides.values, strict=True)}
    assert values["use_sim_time"] is True, "the bridges publish /clock"
    assert values.get("control_interface", "carla") == "carla", "both bridges answer to the CARLA control topic"


@both
def test_parameters_it_sets_are_node_parameters(sim: str) -> None:
    (node,) = _calls(sim, "Node")
    params = _kwargs(node)["parameters"].elts
    assert _config_name(params[0]) == "params_file", "the parameters file first, overrides after it"
    names = {k.value for e in params if isinstance(e, ast.Dict) for k in e.keys}
    assert names <= set(PARAMETERS) | {"use_sim_time"}, names - set(PARAMETERS)


@both
def test_default_params_file_exists(sim: str) -> None:
    join = _declared(sim)["params_file"]
    assert ast.unparse(join.func) == "os.path.join" and ast.unparse(join.args[0]) == "share"
    rel = Path(*[a.value for a in join.args[1:]])
    assert (REPO / rel).is_file(), f"{rel} is not in the repository"
    assert rel.parts[0] == "config", "config/ is what setup.py installs into the package share"


@both
def test_every_launch_configuration_is_declared(sim: str) -> None:
    used = {name for n in ast.walk(_tree(sim)) if (name := _config_name(n)) is not None}
    assert used <= set(_declared(sim)), f"undeclared: {used - set(_declared(sim))}"


@both
def test_bridge_module_and_shutdown_on_exit(sim: str) -> None:
    cmd = _bridge_cmd(sim)
    assert [ast.unparse(e) for e in cmd[1:3]] == ["'-m'", repr(LAUNCHES[sim][1])]
    (handler,) = _calls(sim, "OnProcessExit")
    assert ast.unparse(_kwargs(handler)["target_action"]) == "bridge"
    (emit,) = _calls(sim, "EmitEvent")
    assert getattr(_kwargs(emit)["event"].func, "id", None) == "Shutdown"
    assert "ros2 launch autoprune_ros " + LAUNCHES[sim][0].name in ast.get_docstring(_tree(sim))
    assert "ROS_DOMAIN_ID" in ast.get_docstring(_tree(sim))


@both
def test_bridge_accepts_every_option_and_default_value(sim: str) -> None:
    python = _bridge_python(sim)
    usage = _help(sim, python)
    assert usage.returncode == 0, usage.stderr[-2000:]
    accepted = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage.stdout))
    passed = {a for a in _rendered_args(sim) if a.startswith("--")}
    assert passed and passed <= accepted, f"{LAUNCHES[sim][1]} does not accept {sorted(passed - accepted)}"
    checked = _help(sim, python, tuple(_rendered_args(sim)))
    assert checked.returncode == 0, f"the launch defaults are refused: {checked.stderr[-2000:]}"


def test_carla_launch_defaults_are_the_bridge_defaults() -> None:
    from autoprune_sim.carla_bridge import build_parser

    parser = build_parser()
    from_launch = vars(parser.parse_args(_rendered_args("carla")))
    assert from_launch == vars(parser.parse_args(["--routes", str(EXAMPLE_ROUTES)]))


def test_declared_choices_match_the_bridges() -> None:
    from autoprune_sim.carla_bridge import build_parser
    from autoprune_sim.metadrive_env import TERMINATION_RULES

    parser_choices = {a.dest: list(a.choices) for a in build_parser()._actions if a.choices}
    for sim in LAUNCHES:
        for call in _calls(sim, "DeclareLaunchArgument"):
            choices = _kwargs(call).get("choices")
            if choices is not None and sim == "carla":
                assert ast.literal_eval(choices) == parser_choices[call.args[0].value]
            elif choices is not None:
                bridge_choices = {"mode": ["sync", "latency"], "termination": list(TERMINATION_RULES)}
                assert ast.literal_eval(choices) == bridge_choices[call.args[0].value]
