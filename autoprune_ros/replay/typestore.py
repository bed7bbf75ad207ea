"""A rosbags typestore that knows every message the project records, including carla_msgs and ackermann_msgs.

rosbags ships the standard ROS 2 types; interface packages built by rosidl install their .msg files under
<prefix>/share/<package>/msg, so those are read from the ament prefixes (the virtual environment on our machines,
the ROS installation on a vehicle). Works in the simulator environment too (no torch, no rclpy needed).
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore

EXTRA_PACKAGES = ("carla_msgs", "ackermann_msgs")


def _prefixes() -> list[Path]:
    paths = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [*paths, Path(sys.prefix)]


def _msg_dir(package: str) -> Path | None:
    for prefix in _prefixes():
        folder = prefix / "share" / package / "msg"
        if folder.is_dir():
            return folder
    return None


@lru_cache(maxsize=1)
def project_typestore():
    """The ROS 2 Kilted typestore plus the project's interface packages (missing ones are left out)."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for package in EXTRA_PACKAGES:
        folder = _msg_dir(package)
        if folder is None:
            continue
        for path in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store
