"""The process environment a ROS 2 run of this project needs, and a wrapper that runs a command in it.

Used by `make test`, `make demo`, the test suite and every supervisor that starts nodes as processes, so that
all of them agree on discovery, transport and logging. On a vehicle, the ROS installation's setup script and
the launch file provide these instead; values already in the environment are always kept.

    python -m autoprune_ros.rosenv -- pytest -q
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from autoprune_ros.paths import config_path

# Fast DDS's default port mapping stays valid for domain ids 0-101 on Linux.
_MAX_DOMAIN_ID = 101


def _prefix_has_ament_index(prefix: Path) -> bool:
    return (prefix / "share" / "ament_index" / "resource_index" / "packages").is_dir()


def ros_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return `base` (default: os.environ) completed with what the project's ROS processes need.

    - AMENT_PREFIX_PATH includes this interpreter's prefix when it is a ROS prefix (the ROS 2 wheels turn the
      virtual environment into one; without it ament_index raises "AMENT_PREFIX_PATH is not set").
    - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the host.
    - ROS_DOMAIN_ID: a per-run id, so concurrent runs on one machine never see each other.
    - FASTDDS_DEFAULT_PROFILES_FILE: config/fastdds.xml (shared memory sized for camera frames).
    - ROS_LOG_DIR: a fresh temporary folder, so runs never write into the home folder.
    - HF_HUB_OFFLINE=1: nothing is ever downloaded at run time.
    """
    env = dict(os.environ if base is None else base)
    prefix = Path(sys.prefix)
    if _prefix_has_ament_index(prefix):
        paths = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        if str(prefix) not in paths:
            env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(prefix), *paths])
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % _MAX_DOMAIN_ID))
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_path("fastdds.xml")))
    env.setdefault("HF_HUB_OFFLINE", "1")
    if "ROS_LOG_DIR" not in env:
        env["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="autoprune-roslog-")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoprune_ros.rosenv",
        description="Run a command in the project's ROS 2 environment (see the module docstring), "
        "or print that environment when no command is given.",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = ros_environment()
    if not command:
        for key in ("AMENT_PREFIX_PATH", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "RMW_IMPLEMENTATION",
                    "FASTDDS_DEFAULT_PROFILES_FILE", "ROS_LOG_DIR", "HF_HUB_OFFLINE"):
            print(f"export {key}={env[key]}")
        return 0
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        print(f"rosenv: command not found: {command[0]}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
