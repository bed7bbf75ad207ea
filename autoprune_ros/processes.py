"""Start project nodes as child processes and stop them cleanly: what `ros2 launch` does, for machines without it.

Children run `sys.executable -m <module> --ros-args ...` so they share this interpreter, its virtual environment
(the ROS prefix) and the environment from `autoprune_ros.rosenv`.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from autoprune_ros.rosenv import ros_environment


def ros_args(params: Mapping[str, object] | None = None, remaps: Mapping[str, str] | None = None,
             params_file: str | Path | None = None) -> list[str]:
    """`--ros-args` for a node: a parameters file, `-p name:=value` and `-r from:=to` (values as YAML)."""
    args = ["--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = "[" + ",".join(repr(v) if isinstance(v, str) else str(v) for v in value) + "]"
        else:
            text = str(value)
        args += ["-p", f"{name}:={text}"]
    for source, target in (remaps or {}).items():
        args += ["-r", f"{source}:={target}"]
    return args


def start_module(module: str, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 stdout=None, stderr=None) -> subprocess.Popen:
    """Start `python -m module args...` with `env`, by default the project's ROS environment."""
    env = ros_environment() if env is None else dict(env)
    return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=stdout,
                            stderr=stderr, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Ask a child to stop (SIGINT, as Ctrl-C would), escalating to SIGTERM then SIGKILL; returns its exit code."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()
