"""Open a bag's storage as raw (topic, bag time, bytes) streams: rosbags' readers on the normal path, the
recovery readers (`bag_recovery`) for files rosbags cannot open or that fail mid-way; `open_source` dispatches.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoprune_ros.replay.bag_recovery import McapRecovery, SqliteRecovery
from autoprune_ros.replay.bag_storage import BagError, StoredTopic, Unreadable

SUFFIX_STORAGE = {".mcap": "mcap", ".db3": "sqlite3", ".bag": "rosbag1"}
BAG_KINDS = "a rosbag2 folder (with metadata.yaml), a .mcap or .db3 file, or a ROS 1 .bag"


class _RosbagsSource:
    """rosbags' own readers: rosbag2 folder or bare .mcap / .db3 file, or ROS 1 .bag."""

    def __init__(self, path: Path, storage: str, problems: list[str]) -> None:
        if storage == "rosbag1":
            from rosbags.rosbag1 import Reader
        else:
            from rosbags.rosbag2 import Reader
        self.path, self.storage, self.ros1 = path, storage, storage == "rosbag1"
        self.reader = Reader(path)
        self.reader.open()
        try:
            self._read_connections(problems)
        except BaseException:
            self.reader.close()
            raise

    def _read_connections(self, problems: list[str]) -> None:
        self.topics: dict[str, StoredTopic] = {}
        self._connections = []
        for conn in self.reader.connections:
            known = self.topics.get(conn.topic)
            if known is not None and known.msgtype != conn.msgtype:
                problems.append(f"{conn.topic}: recorded with two types ({known.msgtype}, {conn.msgtype}); "
                                f"only the {known.msgtype} messages are read")
                continue
            self._connections.append(conn)
            if known is not None:
                known.count += conn.msgcount
                continue
            fmt = {"MSG": "msg", "IDL": "idl"}.get(conn.msgdef.format.name)
            encoding = "ros1" if self.ros1 else conn.ext.serialization_format
            self.topics[conn.topic] = StoredTopic(conn.topic, conn.msgtype, conn.msgcount,
                                                  (fmt, conn.msgdef.data) if fmt and conn.msgdef.data.strip()
                                                  else None, encoding)
        has = self.reader.message_count > 0  # rosbags' end time is one past the last message
        self.start_ns = self.reader.start_time if has else 0
        self.duration_ns = self.reader.end_time - 1 - self.reader.start_time if has else 0

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        conns = [c for c in self._connections if c.topic in topics]
        if conns:  # rosbags reads every connection when given none
            for conn, t_ns, raw in self.reader.messages(connections=conns):
                yield conn.topic, t_ns, raw

    def recovery(self, problems: list[str]) -> Any:
        """The recovery-mode reader of the same storage files (None where there is none: ROS 1)."""
        files = _storage_files(self.path) if self.path.is_dir() else [self.path]
        return _recovery_source(files, problems) if not self.ros1 else None

    def close(self) -> None:
        self.reader.close()


class _Chain:
    """Several storage files of one bag (split rosbag2 without usable metadata), read one after the other."""

    def __init__(self, sources: list[Any]) -> None:
        self.sources = sources
        self.storage, self.ros1 = sources[0].storage, False
        self.topics: dict[str, StoredTopic] = {}
        for src in sources:
            for name, topic in src.topics.items():
                if name in self.topics:
                    self.topics[name].count += topic.count
                else:
                    self.topics[name] = StoredTopic(name, topic.msgtype, topic.count, topic.definition, topic.encoding)
        self.start_ns = min(s.start_ns for s in sources)
        self.duration_ns = max(s.start_ns + s.duration_ns for s in sources) - self.start_ns

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        for src in self.sources:
            yield from src.messages(topics)

    def recovery(self, problems: list[str]) -> Any:
        recovered = [s.recovery(problems) or s for s in self.sources]
        return _Chain(recovered) if any(r is not s for r, s in zip(recovered, self.sources, strict=True)) else None

    def close(self) -> None:
        for src in self.sources:
            src.close()


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _storage_files(folder: Path) -> list[Path]:
    for suffix in (".mcap", ".db3"):
        files = sorted(folder.glob(f"*{suffix}"), key=_natural_key)
        if files:
            return files
    return []


def _folder_storage(folder: Path) -> str:
    """The storage plugin named in a rosbag2 folder's metadata.yaml ("mcap" if it names none)."""
    found = re.search(r"storage_identifier:\s*['\"]?(\w+)", (folder / "metadata.yaml").read_text(errors="replace"))
    return found.group(1) if found else "mcap"


def _recovery_source(files: list[Path], problems: list[str]) -> Any:
    """Recovery-mode readers of `files` chained; None if none of them yields anything."""
    sources = []
    for file in files:
        kind = McapRecovery if file.suffix == ".mcap" else SqliteRecovery
        try:
            sources.append(kind(file, problems))
        except (Unreadable, OSError) as exc:
            problems.append(f"{file.name}: unreadable even in recovery mode ({exc})")
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else _Chain(sources)


def _file_source(file: Path, problems: list[str]) -> Any:
    """rosbags' reader of one storage file, or the recovery reader where rosbags cannot open it."""
    try:
        return _RosbagsSource(file, SUFFIX_STORAGE[file.suffix], problems)
    except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds; all mean "damaged"
        problems.append(f"{file.name}: rosbags cannot open it ({brief(exc)}); reading it in recovery mode")
    return _recovery_source([file], problems)


def brief(exc: BaseException) -> str:
    """An exception's message for a problem line (its type where it has none), cut at 200 characters."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def open_source(path: Path, problems: list[str]) -> Any:
    """The reader for `path`; BagError when nothing in it can be read."""
    if not path.exists():
        raise BagError(f"{path}: no such file or folder; pass {BAG_KINDS}")
    if path.is_dir():
        if (path / "metadata.yaml").exists():
            try:
                return _RosbagsSource(path, _folder_storage(path), problems)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{path.name}: rosbags cannot open the bag folder ({brief(exc)}); reading its "
                                "storage files directly")
        else:
            problems.append(f"{path.name}: no metadata.yaml; reading its storage files directly")
        files = _storage_files(path)
        if not files:
            raise BagError(f"{path}: a folder without a .mcap or .db3 storage file; pass {BAG_KINDS}")
        sources = [src for src in (_file_source(f, problems) for f in files) if src is not None]
        if not sources:
            raise BagError(f"{path}: none of its storage files can be read ({'; '.join(problems[-len(files):])}); "
                           "re-copy or re-record the bag")
        return sources[0] if len(sources) == 1 else _Chain(sources)
    storage = SUFFIX_STORAGE.get(path.suffix)
    if storage is None:
        kind = f"file type {path.suffix!r}" if path.suffix else "file without a suffix"
        raise BagError(f"{path}: not a bag (unknown {kind}); pass {BAG_KINDS}")
    if storage == "rosbag1":
        try:
            return _RosbagsSource(path, storage, problems)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{path}: not a readable ROS 1 bag ({brief(exc)}); an unindexed bag (recording cut "
                           "short) needs `rosbag reindex` first") from None
    source = _file_source(path, problems)
    if source is None:
        raise BagError(f"{path}: not a readable {storage} bag ({problems[-1]}); re-copy or re-record the bag")
    return source

