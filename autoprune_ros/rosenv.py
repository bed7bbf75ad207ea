"""The process environment a ROS 2 run of this project needs, and a wrapper that runs a command in it.

Used by `make test`, `make demo`, the test suite and every supervisor that starts nodes as processes, so that
all of them agree on discovery, transport and logging. On a vehicle, the ROS installation's setup script and
the launch file provide these instead; values already in the environment are always kept.

    python -m autoprune_ros.rosenv -- pytest -q
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from autoprune_ros.paths import config_path

# Fast DDS's default port mapping stays valid for domain ids 0-101 on Linux.
_MAX_DOMAIN_ID = 101
_claimed: dict = {}  # the domain id this process holds -> its lock file, open until the process exits


def claim_domain_id() -> int:
    """A ROS domain id in 1..101 that no other live process on this machine has claimed: the first, from a
    pid-derived start, whose lock file (in the temporary folder) this process can lock. The lock lives as long as
    this process, and across `exec` (the rosenv wrapper), so concurrent runs never share a domain: two
    closed-loop evaluations that did once drove each other's cars. Later calls return the same id."""
    if _claimed:
        return next(iter(_claimed))
    start = os.getpid() % _MAX_DOMAIN_ID
    for offset in range(_MAX_DOMAIN_ID):
        domain = 1 + (start + offset) % _MAX_DOMAIN_ID
        lock = open(Path(tempfile.gettempdir()) / f"autoprune-ros-domain-{domain}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        os.set_inheritable(lock.fileno(), True)
        _claimed[domain] = lock
        return domain
    raise RuntimeError(f"all {_MAX_DOMAIN_ID} ROS domain ids are claimed by other runs on this machine; set "
                       "ROS_DOMAIN_ID yourself or wait for some to end")


def _prefix_has_ament_index(prefix: Path) -> bool:
    return (prefix / "share" / "ament_index" / "resource_index" / "packages").is_dir()


def ros_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return `base` (default: os.environ) completed with what the project's ROS processes need.

    - AMENT_PREFIX_PATH includes this interpreter's prefix when it is a ROS prefix (the ROS 2 wheels turn the
      virtual environment into one; without it ament_index raises "AMENT_PREFIX_PATH is not set").
    - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the host.
    - ROS_DOMAIN_ID: an id no other run on this machine holds (`claim_domain_id`), so concurrent runs never see
      each other.
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
    if "ROS_DOMAIN_ID" not in env:
        env["ROS_DOMAIN_ID"] = str(claim_domain_id())
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
