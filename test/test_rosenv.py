"""rosenv: concurrent runs on one machine get ROS domain ids of their own."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from autoprune_ros.rosenv import claim_domain_id, ros_environment

_HOLD = ("import sys; from autoprune_ros.rosenv import claim_domain_id; print(claim_domain_id(), flush=True); "
         "sys.stdin.readline()")


def _holder() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def _lock(domain: int):
    return open(Path(tempfile.gettempdir()) / f"autoprune-ros-domain-{domain}.lock", "a")  # noqa: SIM115


def test_live_runs_never_share_a_domain_and_an_ended_one_frees_it() -> None:
    mine = claim_domain_id()
    assert claim_domain_id() == mine, "a process keeps its id"
    holders = [_holder() for _ in range(3)]
    ids = {mine, *(domain for _, domain in holders)}
    assert len(ids) == 4 and all(1 <= d <= 101 for d in ids)
    with _lock(holders[0][1]) as lock, pytest.raises(OSError):
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the run lives
    for proc, _ in holders:
        proc.communicate("\n", timeout=30)
    with _lock(holders[0][1]) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once it ended
        fcntl.flock(lock, fcntl.LOCK_UN)


def test_the_environment_keeps_a_given_domain() -> None:
    assert ros_environment({"ROS_DOMAIN_ID": "7"})["ROS_DOMAIN_ID"] == "7"
    assert ros_environment({})["ROS_DOMAIN_ID"] == str(claim_domain_id())


def test_the_wrapper_hands_its_claim_to_the_command() -> None:
    """`python -m autoprune_ros.rosenv -- cmd` execs cmd: the lock must survive the exec, held by cmd."""
    script = ("import os, fcntl, sys; d = os.environ['ROS_DOMAIN_ID']; f = open(sys.argv[1] + d + '.lock', 'a'); "
              "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    prefix = str(Path(tempfile.gettempdir()) / "autoprune-ros-domain-")
    done = subprocess.run([sys.executable, "-m", "autoprune_ros.rosenv", "--", sys.executable, "-c", script, prefix],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "BlockingIOError" in done.stderr, "the exec'd command still holds the lock"
