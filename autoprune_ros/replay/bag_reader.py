"""Read a bag for replay: rosbag2 (a folder with metadata.yaml, or a bare .mcap / .db3 file) or ROS 1 `.bag`.

Opening a bag detects which topic plays which role (`detect_topics`), then makes one index pass over the role
topics: the small ones (instruction, odometry, reference control) are kept in memory, of the cameras only the
header stamps. `BagReader.frames()` then streams the camera messages again and emits one `ReplayFrame` per
primary-camera message in header-stamp order, holding back only the messages that arrived out of order.

Damaged bags are read as far as they go, never with a traceback: a bag rosbags cannot open or that fails
mid-way is re-read in recovery mode (MCAP: a sequential record scan that keeps everything before the damage and
skips broken chunks; SQLite: row by row through the readable pages of the file); topics of an unknown type and
messages that do not deserialize are skipped; every such finding is a line in `info.problems`. Only a bag
with nothing to replay (missing, not a bag, empty, no camera) raises `BagError`.

Messages are rosbags objects: ROS 2 bags deserialize with the bag's own message definitions, falling back to
`project_typestore()` (carla_msgs, ackermann_msgs) where the bag has none; ROS 1 bags with their connection
definitions (so image headers there also carry `seq`).

Topic roles come from `topic_roles`, the raw message streams from `bag_sources` (recovery: `bag_recovery`);
this module decodes them and builds the frames.
"""
from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from autoprune_ros.replay.bag_sources import brief, open_source
from autoprune_ros.replay.bag_storage import BagError, StoredTopic
from autoprune_ros.replay.frames import BagInfo, ReferenceControl, ReplayFrame, TopicMap, Track
from autoprune_ros.replay.topic_roles import ACKERMANN, detect_topics
from autoprune_ros.vla.route import path_points, quaternion_yaw, to_ego_frame

__all__ = ["DEFAULT_MAX_STEER_RAD", "BagError", "BagReader", "detect_topics", "open_bag"]

DEFAULT_MAX_STEER_RAD = 0.6  # the node's controller default: Ackermann steering angle for a full steer of 1


# ---------------------------------------------------------------- decoding
def _parse_definition(fmt: str, text: str, msgtype: str) -> dict:
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    if fmt == "msg":
        return get_types_from_msg(text, msgtype)
    sep = "=" * 80 + "\n"
    types: dict = {}
    parts = text.split(sep)[1:] if text.startswith(sep + "IDL: ") else [text]
    for part in parts:
        types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    return types


def _decoders(topics: Mapping[str, StoredTopic], ros1: bool, problems: list[str]) -> dict[str, Callable[[bytes], Any]]:
    """topic -> raw bytes to rosbags message, for every topic whose type can be resolved; a problem line each
    for the others (they are skipped)."""
    from rosbags.typesys import Stores, get_typestore

    from autoprune_ros.replay.typestore import project_typestore

    shared = get_typestore(Stores.EMPTY)
    decoders = {}
    for topic in topics.values():
        if topic.encoding not in ("cdr", "ros1"):
            problems.append(f"{topic.name}: serialization {topic.encoding!r} cannot be decoded (CDR and ROS 1 "
                            "only); topic skipped")
            continue
        store = None
        if topic.definition is not None:
            try:
                types = _parse_definition(*topic.definition, topic.msgtype)
            except Exception:  # noqa: BLE001 - a malformed definition: fall back below
                types = None
            for candidate in (shared, get_typestore(Stores.EMPTY)) if types else ():
                try:
                    candidate.register(types)
                    candidate.get_msgdef(topic.msgtype)
                    store = candidate
                    break
                except Exception:  # noqa: BLE001 - conflicting or incomplete definition
                    continue
        if store is None and not ros1 and topic.msgtype in project_typestore().fielddefs:
            store = project_typestore()
        if store is None:
            problems.append(f"{topic.name}: message type {topic.msgtype} has no usable definition in the bag and "
                            "is unknown to the project's typestore; topic skipped")
            continue
        decode = store.deserialize_ros1 if ros1 else store.deserialize_cdr
        decoders[topic.name] = partial(decode, typename=topic.msgtype)
    return decoders


def _stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _reference(msg: Any, msgtype: str, max_steer_rad: float) -> ReferenceControl:
    if msgtype == ACKERMANN:  # REP 103: positive steering angle = left already
        steer = float(np.clip(msg.drive.steering_angle / max_steer_rad, -1.0, 1.0))
        return ReferenceControl(steer=steer, speed=float(msg.drive.speed))
    return ReferenceControl(steer=-float(msg.steer), throttle=float(msg.throttle), brake=float(msg.brake))


# ---------------------------------------------------------------- the reader
@dataclass
class _Index:
    """What the index pass keeps: camera (stamp, seq, bag time) per topic, the small topics decoded."""

    cameras: dict[str, list[tuple[int, int, int]]]
    instructions: list[tuple[int, str]] = field(default_factory=list)  # (bag time, text)
    # stamp, x, y, yaw, speed, yaw rate
    odometry: list[tuple[int, float, float, float, float, float]] = field(default_factory=list)
    references: list[tuple[int, ReferenceControl]] = field(default_factory=list)
    routes: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (stamp, (K, 2) points)
    failed: Counter = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)


@dataclass
class _Plan:
    """One frame to emit: its primary message and the camera messages that make its views."""

    stamp_ns: int
    bag_time_ns: int
    keys: list[tuple[str, int]]  # (topic, seq) per view, primary first


class BagReader:
    """An open bag for replay (a context manager). `info` holds its identity, topic roles and problems;
    `frames()` streams replay frames, `track()` gives the odometry, `messages()` every readable message.

    Multi-camera rule: each primary-camera message is one frame; every other camera contributes the message
    whose header stamp is nearest the primary's within `camera_tolerance_ms`, else (as the node's frame sync
    does with a fresh but unsynced view) its latest message stamped up to `camera_timeout_ms` before it, else
    it is left out of that frame (the frame then has fewer views, as on the node). Instruction: the latest one
    recorded at or before the frame's bag time (String has no header; in the project's bags bag time = stamp).
    Speed and reference control: the latest message whose header stamp is at or before the frame's stamp.

    Opening reads the role topics once (the index pass); `frames()`, `messages()` and `cdr_messages()` each read
    the bag again when iterated. Iterate one of them at a time.
    """

    def __init__(self, path: str | Path, topics: Mapping[str, Any] | None = None, *,
                 camera_tolerance_ms: float = 50.0, camera_timeout_ms: float = 500.0,
                 max_steer_angle: float = DEFAULT_MAX_STEER_RAD) -> None:
        if max_steer_angle <= 0:
            raise ValueError(f"max_steer_angle must be positive (radians), got {max_steer_angle}")
        self.path = Path(path)
        self._overrides = dict(topics or {})
        self._tolerance_ns = int(camera_tolerance_ms * 1e6)
        self._timeout_ns = int(camera_timeout_ms * 1e6)
        self._max_steer = max_steer_angle
        problems: list[str] = []
        self._source = open_source(self.path, problems)
        try:
            self._setup(problems)
            self._index = self._index_pass()
            self._plans = self._plan()
        except BaseException:
            self.close()
            raise

    # ---- opening
    def _setup(self, problems: list[str], listed: dict[str, int] | None = None) -> None:
        """Decoders, topic roles and `info` for the current source (`listed`: the index counts to keep)."""
        src = self._source
        if not any(t.count for t in src.topics.values()):
            found = f" ({problems[-1]})" if problems else ""
            raise BagError(f"{self.path}: the bag has no readable messages{found}; record or pick a bag with "
                           "camera frames")
        self._decoders = _decoders(src.topics, src.ros1, problems)
        readable = {name: src.topics[name].msgtype for name in self._decoders}
        for value in self._overrides.values():
            for name in [value] if isinstance(value, str) else value or ():
                if name in src.topics and name not in readable:
                    raise BagError(f"{self.path}: topic {name} cannot be decoded ({src.topics[name].msgtype} has no "
                                   "usable definition); pick another topic")
        try:
            topic_map = detect_topics(readable, self._overrides, problems)
        except BagError as exc:
            raise BagError(f"{self.path}: {exc}") from None
        self._types = readable
        self.info = BagInfo(path=self.path, storage=src.storage, topics=topic_map,
                            message_counts=listed or {name: t.count for name, t in sorted(src.topics.items())},
                            duration_ns=int(src.duration_ns), problems=problems)

    def _roles(self) -> set[str]:
        m = self.info.topics
        return {*m.cameras, *(t for t in (m.instruction, m.odometry, m.reference_control, m.route) if t)}

    def _read(self, topics: set[str], on_error: Callable[[BaseException, int], None] | None
              ) -> Iterator[tuple[str, int, bytes]]:
        """The source's messages of `topics`; a read failure ends the stream (reported through `on_error`)."""
        n = 0
        try:
            for item in self._source.messages(topics):
                n += 1
                yield item
        except Exception as exc:  # noqa: BLE001 - a damaged storage raises all kinds of errors
            if on_error is not None:
                on_error(exc, n)

    def _index_pass(self) -> _Index:
        failure: list[tuple[BaseException, int]] = []
        index, seqs = self._scan(lambda exc, n: failure.append((exc, n)))
        if failure:
            exc, n = failure[0]
            problems = self.info.problems
            stopped = f"reading stopped after {n} messages ({brief(exc)})"
            at = len(problems)
            problems.append(f"{stopped}; re-reading the bag in recovery mode")
            recovered = self._source.recovery(problems)
            if recovered is None:
                problems[at] = f"{stopped}; the rest of the bag is lost"
            else:
                self._source.close()
                self._source = recovered
                self._setup(problems, self.info.message_counts)
                index, seqs = self._scan(None)
        self._report_index(index, seqs)
        return index

    def _scan(self, on_error: Callable[[BaseException, int], None] | None) -> tuple[_Index, Counter]:
        """Read the role topics once: camera stamps, the small topics decoded; per-topic message counts."""
        m = self.info.topics
        index = _Index(cameras={c: [] for c in m.cameras})
        seqs: Counter[str] = Counter()
        for topic, t_ns, raw in self._read(self._roles(), on_error):
            seq = seqs[topic]
            seqs[topic] += 1
            try:
                msg = self._decoders[topic](raw)
                if topic in index.cameras:
                    index.cameras[topic].append((_stamp_ns(msg), seq, t_ns))
                elif topic == m.instruction:
                    index.instructions.append((t_ns, str(msg.data)))
                elif topic == m.odometry:
                    pose, lin = msg.pose.pose, msg.twist.twist.linear
                    index.odometry.append((_stamp_ns(msg), float(pose.position.x), float(pose.position.y),
                                           quaternion_yaw(pose.orientation), math.hypot(lin.x, lin.y),
                                           float(msg.twist.twist.angular.z)))
                elif topic == m.route:
                    index.routes.append((_stamp_ns(msg), path_points(msg)))
                else:
                    index.references.append((_stamp_ns(msg), _reference(msg, self._types[topic], self._max_steer)))
            except Exception as exc:  # noqa: BLE001 - undecodable message: skipped and counted
                index.failed[topic] += 1
                index.first_error.setdefault(topic, brief(exc))
        return index, seqs

    def _report_index(self, index: _Index, seqs: Counter) -> None:
        problems = self.info.problems
        for topic in sorted(self._roles()):
            listed = self.info.message_counts.get(topic, 0)
            if seqs[topic] < listed:
                problems.append(f"{topic}: only {seqs[topic]} of the {listed} messages listed in the bag's index "
                                "could be read")
        for topic, n in index.failed.items():
            problems.append(f"{topic}: {n} of {seqs[topic]} messages could not be decoded and were skipped "
                            f"(first: {index.first_error[topic]})")
        stamped = {**index.cameras, self.info.topics.odometry: index.odometry,
                   self.info.topics.reference_control: index.references, self.info.topics.route: index.routes}
        for topic, items in stamped.items():
            late, newest = 0, None
            for item in items:
                if newest is not None and item[0] < newest:
                    late += 1
                newest = item[0] if newest is None else max(newest, item[0])
            if topic and late:
                problems.append(f"{topic}: {late} of {len(items)} header stamps are out of order (earlier than a "
                                "message recorded before them); replayed in stamp order")
        index.instructions.sort(key=lambda x: x[0])
        index.odometry.sort(key=lambda x: x[0])
        index.references.sort(key=lambda x: x[0])
        index.routes.sort(key=lambda x: x[0])

    def _plan(self) -> list[_Plan]:
        cams = self.info.topics.cameras
        primary = sorted(self._index.cameras[cams[0]])
        if not primary:
            raise BagError(f"{self.path}: no readable frames on the camera topic {cams[0]} "
                           f"({'; '.join(self.info.problems[-3:]) or 'no messages'}); pick another camera with "
                           "--camera-topics or another bag")
        others = {c: sorted(self._index.cameras[c]) for c in cams[1:]}
        unsynced: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        plans = []
        for stamp, seq, t_ns in primary:
            keys = [(cams[0], seq)]
            for cam, items in others.items():
                match = self._match(items, stamp)
                if match is None:
                    missing[cam] += 1
                    continue
                if abs(match[0] - stamp) > self._tolerance_ns:
                    unsynced[cam] += 1
                keys.append((cam, match[1]))
            plans.append(_Plan(stamp, t_ns, keys))
        for cam, n in unsynced.items():
            self.info.problems.append(f"{cam}: {n} frames have no view within {self._tolerance_ns / 1e6:g} ms of "
                                      "the primary's stamp; an older view stands in")
        for cam, n in missing.items():
            self.info.problems.append(f"{cam}: {n} frames have no view within {self._timeout_ns / 1e6:g} ms; the "
                                      "view is left out of those frames")
        return plans

    def _match(self, items: list[tuple[int, int, int]], stamp: int) -> tuple[int, int, int] | None:
        i = bisect.bisect_left(items, (stamp,))
        near = [x for x in items[max(0, i - 1):i + 1] if abs(x[0] - stamp) <= self._tolerance_ns]
        if near:
            return min(near, key=lambda x: abs(x[0] - stamp))
        j = bisect.bisect_right(items, (stamp, math.inf)) - 1
        if j >= 0 and stamp - items[j][0] <= self._timeout_ns:
            return items[j]
        return None

    # ---- public API
    @property
    def topics(self) -> TopicMap:
        return self.info.topics

    @property
    def types(self) -> dict[str, str]:
        """topic -> message type of every topic that can be decoded (ROS 2 names, e.g. sensor_msgs/msg/Image)."""
        return dict(self._types)

    def __len__(self) -> int:
        """The number of frames `frames()` yields."""
        return len(self._plans)

    def frames(self) -> Iterator[ReplayFrame]:
        """Replay frames in header-stamp order (see the class docstring for how inputs are matched)."""
        plans = self._plans
        need: Counter[tuple[str, int]] = Counter(k for p in plans for k in p.keys)
        held: dict[tuple[str, int], Any] = {}
        seqs: Counter[str] = Counter()
        cams = set(self.info.topics.cameras)
        emitted = 0
        for topic, _t_ns, raw in self._read(self._roles(), None):
            seq = seqs[topic]
            seqs[topic] += 1
            if topic not in cams or (topic, seq) not in need:
                continue
            try:
                held[(topic, seq)] = self._decoders[topic](raw)
            except Exception:  # noqa: BLE001 - counted by the index pass
                continue
            while emitted < len(plans) and all(k in held for k in plans[emitted].keys):
                yield self._frame(emitted, held, need)
                emitted += 1
        for i in range(emitted, len(plans)):  # only after a read failure: emit what arrived
            if plans[i].keys[0] in held:
                yield self._frame(i, held, need)

    def _frame(self, i: int, held: dict, need: Counter) -> ReplayFrame:
        plan, index = self._plans[i], self._index
        views = [held[k] for k in plan.keys if k in held]
        for key in plan.keys:
            need[key] -= 1
            if need[key] <= 0:
                held.pop(key, None)
        instruction = _latest(index.instructions, plan.bag_time_ns)
        odom = _latest(index.odometry, plan.stamp_ns)
        ref = _latest(index.references, plan.stamp_ns)
        route = _latest(index.routes, plan.stamp_ns)
        return ReplayFrame(index=i, stamp_ns=plan.stamp_ns, bag_time_ns=plan.bag_time_ns, views=views,
                           instruction=None if instruction is None else instruction[1],
                           speed_mps=None if odom is None else odom[4],
                           yaw_rate_rps=None if odom is None else odom[5],
                           reference=None if ref is None else ref[1],
                           route=None if route is None or odom is None else to_ego_frame(route[1], *odom[1:4]))

    def track(self) -> Track:
        """The bag's odometry in stamp order (empty arrays without an odometry topic)."""
        odom = self._index.odometry
        return Track(stamps_ns=np.array([o[0] for o in odom], dtype=np.int64),
                     poses=np.array([o[1:4] for o in odom], dtype=np.float64).reshape(-1, 3),
                     speeds=np.array([o[4] for o in odom], dtype=np.float64))

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
        """(topic, msgtype, bag time ns, rosbags message) of every readable message (of `topics`), in the bag's
        recorded order (bag time; recovery mode: file order). Undecodable messages are skipped."""
        wanted = set(self._decoders) if topics is None else set(topics) & set(self._decoders)
        reported: set[str] = set(self._index.failed)
        for topic, t_ns, raw in self._read(wanted, None):
            try:
                msg = self._decoders[topic](raw)
            except Exception as exc:  # noqa: BLE001
                if topic not in reported:
                    reported.add(topic)
                    self.info.problems.append(f"{topic}: undecodable messages skipped (first: {brief(exc)})")
                continue
            yield topic, self._types[topic], t_ns, msg

    def cdr_messages(self, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """Like `messages()` but CDR bytes (`rclpy.serialization.deserialize_message` reads them): rosbag2 data
        as stored, ROS 1 data converted on the wire level (project typestore, Header `seq` dropped)."""
        from autoprune_ros.replay.typestore import project_typestore

        store = project_typestore()
        wanted = set(self._decoders) if topics is None else set(topics) & set(self._decoders)
        if self._source.ros1:
            skipped = sorted(t for t in wanted if self._types[t] not in store.fielddefs)
            for topic in skipped:
                self.info.problems.append(f"{topic}: {self._types[topic]} is not a ROS 2 type the project knows; "
                                          "not converted to CDR")
            wanted -= set(skipped)
        for topic, t_ns, raw in self._read(wanted, None):
            if not self._source.ros1:
                yield topic, self._types[topic], t_ns, bytes(raw)
                continue
            try:
                yield topic, self._types[topic], t_ns, bytes(store.ros1_to_cdr(raw, self._types[topic]))
            except Exception:  # noqa: BLE001 - undecodable: the index pass or messages() reports it
                continue

    def close(self) -> None:
        source, self._source = getattr(self, "_source", None), None
        if source is not None:
            with suppress(Exception):  # closing a damaged file must not mask the real error
                source.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _latest(items: list[tuple], t_ns: int) -> tuple | None:
    """The last item whose time (first field) is at or before `t_ns`; items sorted by time."""
    i = bisect.bisect_right(items, t_ns, key=lambda x: x[0])
    return items[i - 1] if i else None


def open_bag(path: str | Path, topics: Mapping[str, Any] | None = None, **options: Any) -> BagReader:
    """Open a bag for replay (see BagReader; `options`: camera_tolerance_ms, camera_timeout_ms, max_steer_angle).
    BagError (a ValueError) when the bag cannot be replayed at all."""
    return BagReader(path, topics, **options)
