"""Write bags with rosbags: rosbag2 (mcap or sqlite3, metadata version 8 so Humble reads them) or ROS 1 `.bag`.

Messages are rosbags objects of `project_typestore()` (ROS 2 layout) or already-serialized CDR bytes (what
`rclpy.serialization.serialize_message` returns), so a recorder subscribed with rclpy can store messages
without converting them. For ROS 1 the CDR bytes are converted on the wire level (rosbags inserts the
Header's `seq`) and the connection definitions come from the ROS 1 Noetic typestore.
"""
from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

STORAGES = ("mcap", "sqlite3", "rosbag1")


class BagWriteError(ValueError):
    """A bag that cannot be written (existing path, unknown storage or type, closed writer); says why."""


def _referenced_types(fields: list) -> list[str]:
    """Message type names a typestore field list refers to (nested messages and their arrays / sequences)."""
    names = []
    for _, (_, args) in fields:
        if isinstance(args, str):  # a nested message
            names.append(args)
        elif isinstance(args, tuple) and isinstance(args[0], tuple) and isinstance(args[0][1], str):
            names.append(args[0][1])  # an array or sequence of messages
    return names


def _ros1_typestore(msgtype: str):
    """The Noetic typestore plus the project's types it lacks (carla_msgs, ackermann_msgs), so ROS 1 connection
    definitions carry Noetic's Header (with `seq`). Assumes, as rosbags' converter does, that the other types
    have the same wire layout in ROS 1 and ROS 2."""
    from rosbags.typesys import Stores, get_typestore

    from autoprune_ros.replay.typestore import project_typestore

    ros1, ros2 = get_typestore(Stores.ROS1_NOETIC), project_typestore()
    missing: dict[str, Any] = {}
    todo = [msgtype]
    while todo:
        name = todo.pop()
        if name in ros1.fielddefs or name in missing:
            continue
        missing[name] = ros2.fielddefs[name]
        todo.extend(_referenced_types(ros2.fielddefs[name][1]))
    if missing:
        ros1.register(missing)
    return ros1


class BagWriter:
    """An open bag: `add(topic, msgtype)` each topic once, then `write(topic, t_ns, msg)` or
    `write_cdr(topic, t_ns, data)` in any order; `close()` (or leaving the `with` block) writes the index and
    metadata. On an exception inside the `with` block the bag is still closed, so what was written stays readable."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        from autoprune_ros.replay.typestore import project_typestore

        self.path = Path(path)
        if storage not in STORAGES:
            raise BagWriteError(f"unknown bag storage {storage!r}: use one of {', '.join(STORAGES)}")
        if self.path.exists():
            raise BagWriteError(f"{self.path} already exists: bags are never overwritten; remove it or pick "
                                "another path")
        if storage == "rosbag1" and self.path.suffix != ".bag":
            raise BagWriteError(f"{self.path}: a ROS 1 bag is a single file named *.bag; add the suffix")
        self.storage = storage
        self.typestore = project_typestore()
        self._types: dict[str, str] = {}
        self._connections: dict[str, Any] = {}
        if storage == "rosbag1":
            from rosbags.rosbag1 import Writer as Writer1

            self._writer = Writer1(self.path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer

            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer(self.path, version=8, storage_plugin=plugin)
        try:
            self._writer.open()
        except Exception as exc:  # an unwritable folder, a race with another writer
            raise BagWriteError(f"cannot create bag {self.path}: {exc}") from None
        self._open = True

    def add(self, topic: str, msgtype: str) -> None:
        """Declare `topic` with ROS 2 type name `msgtype` (e.g. "sensor_msgs/msg/Image"); once per topic."""
        self._check_open()
        if topic in self._types:
            if self._types[topic] != msgtype:
                raise BagWriteError(f"topic {topic} was added as {self._types[topic]}, not {msgtype}")
            return
        if msgtype not in self.typestore.fielddefs:
            raise BagWriteError(f"unknown message type {msgtype!r} for {topic}: the project typestore has no "
                                "definition (is its interface package installed?)")
        if self.storage == "rosbag1":
            conn = self._writer.add_connection(topic, msgtype, typestore=_ros1_typestore(msgtype))
        else:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        self._types[topic] = msgtype
        self._connections[topic] = conn

    def write(self, topic: str, t_ns: int, msg: Any) -> None:
        """Serialize the rosbags message `msg` (of the topic's type) and record it at bag time `t_ns`."""
        self._check_topic(topic)
        data = self.typestore.serialize_cdr(msg, self._types[topic], little_endian=True)
        self.write_cdr(topic, t_ns, data)

    def write_cdr(self, topic: str, t_ns: int, data: bytes | memoryview) -> None:
        """Record already-serialized CDR bytes (ROS 2 wire format) at bag time `t_ns`."""
        self._check_topic(topic)
        if self.storage == "rosbag1":
            data = self.typestore.cdr_to_ros1(data, self._types[topic])
        self._writer.write(self._connections[topic], int(t_ns), data)

    def close(self) -> None:
        """Write the index and metadata; safe to call twice."""
        if self._open:
            self._open = False
            self._writer.close()

    def _check_open(self) -> None:
        if not self._open:
            raise BagWriteError(f"bag {self.path} is closed")

    def _check_topic(self, topic: str) -> None:
        self._check_open()
        if topic not in self._connections:
            raise BagWriteError(f"topic {topic} was not added to {self.path}: call add(topic, msgtype) first")

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_writer(path: str | Path, storage: str = "mcap") -> BagWriter:
    """A new bag at `path` ("mcap" / "sqlite3": a rosbag2 folder; "rosbag1": a .bag file); BagWriteError
    (a ValueError) for an existing path or an unknown storage."""
    return BagWriter(path, storage)
