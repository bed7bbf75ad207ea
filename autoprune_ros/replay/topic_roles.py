"""Which bag topic plays which replay role (cameras, instruction, odometry, reference control, route), from the
types."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from autoprune_ros.replay.bag_storage import BagError
from autoprune_ros.replay.frames import TopicMap

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CARLA_CONTROL = "carla_msgs/msg/CarlaEgoVehicleControl"
ACKERMANN = "ackermann_msgs/msg/AckermannDriveStamped"
ROLE_TYPES = {
    "cameras": IMAGE_TYPES,
    "instruction": ("std_msgs/msg/String",),
    "odometry": ("nav_msgs/msg/Odometry",),
    "reference_control": (CARLA_CONTROL, ACKERMANN),
    "route": ("nav_msgs/msg/Path",),
}
CONTRACT_TOPICS = {  # the project's recordings (docs/data.md): preferred when several topics fit a role
    "cameras": "/carla/hero/rgb_front/image",
    "instruction": "/autoprune/instruction",
    "odometry": "/carla/hero/odometry",
    "reference_control": "/carla/hero/vehicle_control_cmd",
    "route": "/carla/hero/waypoints",
}
ROLE_OPTIONS = {"cameras": "--camera-topics", "instruction": "--instruction-topic",
                "odometry": "--odometry-topic", "reference_control": "--reference-topic", "route": "--route-topic"}
DISABLED = ("", "none")
# Path topics that are routes, best first (the recordings' reference path is the lane the expert steered for),
# and Path topics that never are (the node's own predicted trajectory, in bags recorded beside it).
ROUTE_PREFERENCE = (CONTRACT_TOPICS["route"], "/metadrive/hero/reference_path")
NOT_ROUTES = ("/autoprune/trajectory",)


def _normalize_type(msgtype: str) -> str:
    """ROS 1 style "sensor_msgs/Image" -> "sensor_msgs/msg/Image" (rosbags' names); ROS 2 names unchanged."""
    parts = msgtype.strip("/").split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


def _topic_types(types: Mapping[str, str] | Iterable[Any]) -> dict[str, str]:
    if isinstance(types, Mapping):
        return {topic: _normalize_type(t) for topic, t in types.items()}
    return {c.topic: _normalize_type(c.msgtype) for c in types}


def _accepted(role: str) -> str:
    return " or ".join(ROLE_TYPES[role])


def _explicit(role: str, topic: str, types: dict[str, str]) -> str:
    option = ROLE_OPTIONS[role]
    fitting = sorted(t for t, ty in types.items() if ty in ROLE_TYPES[role])
    if topic not in types:
        raise BagError(f"{option} {topic}: no such topic in the bag; topics of type {_accepted(role)}: "
                       f"{', '.join(fitting) or 'none'}")
    if types[topic] not in ROLE_TYPES[role]:
        raise BagError(f"{option} {topic}: its type is {types[topic]}, expected {_accepted(role)}; "
                       f"fitting topics: {', '.join(fitting) or 'none'}")
    return topic


def _detect_route(candidates: list[str], problems: list[str]) -> str | None:
    """The route among the bag's Path topics: the contract's, else the recordings' reference path, else the only
    one; several others make a note, not an error, since most replays do not need a route."""
    candidates = [t for t in candidates if t not in NOT_ROUTES]
    preferred = [t for t in ROUTE_PREFERENCE if t in candidates]
    if preferred or len(candidates) == 1:
        return (preferred or candidates)[0]
    if candidates:
        problems.append(f"route: several nav_msgs/Path topics ({', '.join(candidates)}), none used; pass "
                        f"{ROLE_OPTIONS['route']} to choose")
    return None


def _detect(role: str, types: dict[str, str], problems: list[str]) -> str | None:
    candidates = sorted(t for t, ty in types.items() if ty in ROLE_TYPES[role])
    if role == "route":
        return _detect_route(candidates, problems)
    if len(candidates) == 1:
        return candidates[0]
    option = ROLE_OPTIONS[role]
    if not candidates:
        return None
    if CONTRACT_TOPICS[role] in candidates:
        others = [t for t in candidates if t != CONTRACT_TOPICS[role]]
        problems.append(f"{role}: using {CONTRACT_TOPICS[role]} (the project's topic); also of type "
                        f"{_accepted(role)}: {', '.join(others)} (pass {option} to choose)")
        return CONTRACT_TOPICS[role]
    example = "A,B (first = primary)" if role == "cameras" else "TOPIC"
    raise BagError(f"several topics could be the {role.replace('_', ' ')} ({_accepted(role)}): "
                   f"{', '.join(candidates)}; pass {option} {example} to choose")


def detect_topics(types: Mapping[str, str] | Iterable[Any], overrides: Mapping[str, Any] | None = None,
                  problems: list[str] | None = None) -> TopicMap:
    """Which topic plays which role, from the bag's topic -> type mapping (or its rosbags connections).

    Roles: cameras (sensor_msgs Image / CompressedImage; required), instruction (std_msgs/String), odometry
    (nav_msgs/Odometry), reference_control (carla_msgs/CarlaEgoVehicleControl or
    ackermann_msgs/AckermannDriveStamped). A role's single fitting topic is taken; among several the
    project's contract topic is preferred, otherwise BagError lists them and names the CLI option to pass.
    `overrides` maps a role to None (detect), a topic (cameras: a list or "A,B", first = primary) or, for
    the optional roles, "" / "none" (not used). Missing optional roles are None, with a line in `problems`.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ROLE_TYPES))
    if unknown:
        raise BagError(f"unknown topic role(s) {', '.join(unknown)}: use {', '.join(ROLE_TYPES)}")
    types = _topic_types(types)
    notes: list[str] = [] if problems is None else problems
    cams = overrides.get("cameras")
    if isinstance(cams, str):
        cams = [c.strip() for c in cams.split(",") if c.strip()]
    if cams is not None and (not cams or [c.lower() for c in cams] == ["none"]):
        raise BagError("--camera-topics is empty: name at least one camera topic (the first is the primary)")
    if cams:
        cams = list(cams)
        if len(set(cams)) != len(cams):
            raise BagError(f"--camera-topics names a topic twice: {', '.join(cams)}")
        cameras = tuple(_explicit("cameras", c, types) for c in cams)
    else:
        primary = _detect("cameras", types, notes)
        if primary is None:
            raise BagError(f"no camera topic ({_accepted('cameras')}); topics in the bag: "
                           f"{', '.join(f'{t} [{ty}]' for t, ty in sorted(types.items())) or 'none'}")
        cameras = (primary,)
    chosen: dict[str, str | None] = {}
    for role in ("instruction", "odometry", "reference_control", "route"):
        value = overrides.get(role)
        if value is not None and str(value).strip().lower() in DISABLED:
            chosen[role] = None
            continue
        chosen[role] = _explicit(role, str(value), types) if value is not None else _detect(role, types, notes)
        if chosen[role] is None and role in _CONSEQUENCE:
            notes.append(f"no {role.replace('_', ' ')} topic ({_accepted(role)}) in the bag: "
                         f"{_CONSEQUENCE[role]} (pass {ROLE_OPTIONS[role]} if it has another type name)")
    return TopicMap(cameras=cameras, **chosen)


_CONSEQUENCE = {
    "instruction": "frames carry no instruction, the node's default applies",
    "odometry": "frames carry no speed and there is no reference trajectory",
    "reference_control": "there is no recorded control to compare actions against",
}  # a missing route is no problem: most models do not read one (with it missing, those that do use the camera)
