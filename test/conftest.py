"""Shared fixtures: the project's ROS environment, an isolated rclpy context, child processes that always stop."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from autoprune_ros.rosenv import ros_environment

# Fast DDS reads its environment when a participant is created: set it before any test imports rclpy, so
# running `pytest` directly behaves as `make test` does.
os.environ.update(ros_environment())


@pytest.fixture
def ros_context() -> Iterator[object]:
    """An rclpy context of this test's own, shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python -m module args` children; each is stopped at teardown and its output kept in tmp_path."""
    from autoprune_ros.processes import start_module, stop

    children: list[tuple[subprocess.Popen, object]] = []

    def _spawn(module: str, args: list[str] | tuple = (), env: dict | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"{module.rsplit('.', 1)[-1]}-{len(children)}.log", "w+")
        proc = start_module(module, list(args), env=env, stdout=log, stderr=subprocess.STDOUT)
        children.append((proc, log))
        return proc

    yield _spawn
    for proc, log in children:
        stop(proc)
        log.close()


def spin_until(executor, predicate: Callable[[], bool], timeout: float) -> bool:
    """Spin `executor` until `predicate()` holds or `timeout` seconds pass; returns the predicate's last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()
