"""Recovery-mode readers of damaged storage files: everything still readable, as (topic, bag time, bytes).

MCAP: a sequential record scan that keeps everything before the damage and skips broken chunks. SQLite (.db3):
row by row through the readable, page-aligned prefix of the file. Both raise `Unreadable` for a file that is
no such storage at all.
"""
from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

from autoprune_ros.replay.bag_storage import StoredTopic, Unreadable

# ---- MCAP recovery: a sequential scan of the records (MCAP spec), so a truncated file keeps its first part
_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F


class _Cursor:
    """Little-endian MCAP field reader over a bytes body; struct.error on short data."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def blob(self) -> bytes:
        size = self.take("<I")
        if self.pos + size > len(self.data):
            raise struct.error("field runs past its record")
        self.pos += size
        return self.data[self.pos - size:self.pos]

    def string(self) -> str:
        return self.blob().decode("utf-8", "replace")


def _mcap_decompress(data: bytes, compression: str, partial_ok: bool) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        from backports import zstd

        return zstd.ZstdDecompressor().decompress(data) if partial_ok else zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor().decompress(data)
    raise ValueError(f"unknown chunk compression {compression!r}")


def _mcap_records(f: Any, size: int) -> Iterator[tuple[int, bytes, bool, int]]:
    """(opcode, body, complete, offset) of the records read from file-like `f` holding `size` bytes; the last
    one may be cut short (complete False), and then ends the iteration."""
    while True:
        offset = f.tell()
        head = f.read(9)
        if not head:
            return
        if len(head) < 9:
            yield head[0], b"", False, offset
            return
        length = struct.unpack_from("<Q", head, 1)[0]
        body = f.read(min(length, max(0, size - offset - 9)))
        yield head[0], body, len(body) == length, offset
        if len(body) < length:
            return


def _mcap_events(path: Path) -> Iterator[tuple]:
    """Schema, channel and message records of an MCAP file in file order, then ("damage", text) where the
    file is damaged: a broken chunk is skipped, a cut record ends the scan. Unreadable if it is no MCAP file."""
    with path.open("rb") as f:
        if f.read(8) != _MCAP_MAGIC:
            raise Unreadable("not an MCAP file (its first bytes are not the MCAP magic)")
        for op, body, complete, offset in _mcap_records(f, path.stat().st_size):
            where = f"byte {offset}"
            if op in (_OP_DATA_END, _OP_FOOTER) and complete:
                return
            if op == _OP_CHUNK:
                yield from _mcap_chunk(body, complete, where)
                if not complete:
                    return
            elif not complete:
                yield ("damage", f"the file ends inside a record at {where} (truncated)")
                return
            elif op in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE):
                try:
                    yield _mcap_record(op, body)
                except (struct.error, UnicodeDecodeError):
                    yield ("damage", f"malformed record at {where}, skipped")
    yield ("damage", "the file ends without MCAP's data-end record (truncated)")


def _mcap_record(op: int, body: bytes) -> tuple:
    cur = _Cursor(body)
    if op == _OP_SCHEMA:
        return ("schema", cur.take("<H"), cur.string(), cur.string(), cur.blob().decode("utf-8", "replace"))
    if op == _OP_CHANNEL:
        return ("channel", cur.take("<H"), cur.take("<H"), cur.string(), cur.string())
    channel, _seq, log_time, _pub = cur.take("<H"), cur.take("<I"), cur.take("<Q"), cur.take("<Q")
    return ("message", channel, log_time, body[cur.pos:])


def _mcap_chunk(body: bytes, complete: bool, where: str) -> Iterator[tuple]:
    try:
        cur = _Cursor(body)
        _start, _end, size, crc = cur.take("<Q"), cur.take("<Q"), cur.take("<Q"), cur.take("<I")
        compression = cur.string()
        length = cur.take("<Q")
        records = body[cur.pos:cur.pos + length]
        raw = _mcap_decompress(records, compression, partial_ok=not complete)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means: this chunk is lost
        yield ("damage", f"chunk at {where} cannot be read ({type(exc).__name__}: {exc}), skipped")
        return
    if complete:
        import zlib

        if len(raw) != size or (crc and zlib.crc32(raw) != crc):
            yield ("damage", f"chunk at {where} fails its size or checksum check (corrupt), skipped")
            return
    for op, inner, whole, _ in _mcap_records(io.BytesIO(raw), len(raw)):
        if not whole:
            if complete:
                yield ("damage", f"chunk at {where} ends inside a record (corrupt)")
            break
        if op in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE):
            try:
                yield _mcap_record(op, inner)
            except (struct.error, UnicodeDecodeError):
                yield ("damage", f"malformed record in the chunk at {where}, skipped")
    if not complete:
        yield ("damage", f"the file ends inside the chunk at {where} (truncated); its complete messages were kept")


class _Recovered:
    """Shared by the recovery readers: ROS 2 data, and no further recovery after them."""

    ros1 = False

    def recovery(self, problems: list[str]) -> None:  # noqa: ARG002 - the sources' common signature
        return None


class McapRecovery(_Recovered):
    """Messages of a damaged MCAP file in file order, up to the damage (broken chunks skipped)."""

    storage = "mcap"

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        schemas: dict[int, tuple[str, str, str]] = {}
        self._channels: dict[int, tuple[str, str]] = {}  # id -> (topic, encoding)
        self.topics: dict[str, StoredTopic] = {}
        counts: Counter[int] = Counter()
        first = last = None
        formats = {"ros2msg": "msg", "ros2idl": "idl", "omgidl": "idl"}
        for event in _mcap_events(path):
            kind = event[0]
            if kind == "damage":
                problems.append(f"{path.name}: {event[1]}")
            elif kind == "schema":
                schemas[event[1]] = event[2:]
            elif kind == "channel":
                _, cid, schema_id, topic, encoding = event
                self._channels[cid] = (topic, encoding)
                name, fmt, text = schemas.get(schema_id, ("", "", ""))
                if topic not in self.topics and name:
                    definition = (formats[fmt], text) if fmt in formats and text.strip() else None
                    self.topics[topic] = StoredTopic(topic, name, 0, definition, encoding)
            else:
                counts[event[1]] += 1
                first = event[2] if first is None else min(first, event[2])
                last = event[2] if last is None else max(last, event[2])
        for cid, n in counts.items():
            topic = self._channels.get(cid, ("", ""))[0]
            if topic in self.topics:
                self.topics[topic].count += n
        self.start_ns = first or 0
        self.duration_ns = 0 if first is None else last - first

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        channels: dict[int, str] = {}
        for event in _mcap_events(self.path):
            if event[0] == "channel":
                channels[event[1]] = event[3]
            elif event[0] == "message" and channels.get(event[1]) in topics:
                yield channels[event[1]], event[2], event[3]

    def close(self) -> None:
        pass


# ---- SQLite recovery: the page-aligned readable prefix of the file, rows fetched one by one
class _PrefixFile:
    """A read-only SQLite file view of a damaged .db3: cut to whole pages, its header's page count made to match
    (SQLite otherwise calls a truncated file malformed before reading anything)."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("rb")
        head = bytearray(self.f.read(100))
        if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
            self.f.close()
            raise Unreadable("not an SQLite database (its first bytes are not the SQLite header)")
        page = struct.unpack(">H", head[16:18])[0]
        page = 65536 if page == 1 else page or 4096
        size = path.stat().st_size
        self.size = size - size % page
        head[28:32] = struct.pack(">I", self.size // page)
        self.head = bytes(head)

    def xRead(self, amount: int, offset: int) -> bytes:  # noqa: N802 - apsw's VFS file protocol
        self.f.seek(offset)
        data = self.f.read(max(0, min(amount, self.size - offset)))
        if offset < len(self.head):
            data = self.head[offset:offset + len(data)] + data[len(self.head) - offset:]
        return data + bytes(amount - len(data))  # SQLite expects zero fill past the end

    def xFileSize(self) -> int:  # noqa: N802
        return self.size

    def xClose(self) -> None:  # noqa: N802
        self.f.close()

    def xFileControl(self, op: int, ptr: int) -> bool:  # noqa: N802, ARG002 - no special file controls
        return False


_vfs_ids = count()
_MISSES_TO_STOP = 1000  # consecutive unreadable row ids after which the table is taken to end


class SqliteRecovery(_Recovered):
    """Messages of a damaged rosbag2 .db3, in bag-time order: every message row that can still be read."""

    storage = "sqlite3"

    def __init__(self, path: Path, problems: list[str]) -> None:
        import apsw

        class PrefixVFS(apsw.VFS):
            def xOpen(self, name, flags):  # noqa: N802 - temporary files go to the default VFS
                return _PrefixFile(path) if name is not None else super().xOpen(name, flags)

        self.path, self._name = path, f"autoprune-recovery-{next(_vfs_ids)}"
        self._vfs = PrefixVFS(self._name, "")
        self.db = None
        try:
            self.db = apsw.Connection("file:recovery.db3?immutable=1", vfs=self._name,
                                      flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
            self._read_tables(problems)
        except apsw.Error as exc:
            self.close()
            raise Unreadable(f"SQLite cannot read its tables ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _read_tables(self, problems: list[str]) -> None:
        import apsw

        db = self.db
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"topics", "messages"} <= tables:
            raise Unreadable("an SQLite database without rosbag2's topics and messages tables")
        definitions: dict[str, tuple[str, str]] = {}
        if "message_definitions" in tables:
            for name, enc, text in db.execute("SELECT topic_type, encoding, encoded_message_definition "
                                              "FROM message_definitions"):
                if enc in ("ros2msg", "ros2idl") and text.strip():
                    definitions[name] = ("msg" if enc == "ros2msg" else "idl", text)
        self._topic_ids: dict[int, str] = {}
        self.topics: dict[str, StoredTopic] = {}
        for tid, name, msgtype, fmt in db.execute("SELECT id, name, type, serialization_format FROM topics"):
            self._topic_ids[tid] = name
            self.topics.setdefault(name, StoredTopic(name, msgtype, 0, definitions.get(msgtype), fmt))
        rows, misses, rowid = [], 0, 0
        while misses < _MISSES_TO_STOP:
            rowid += 1
            try:
                row = db.execute("SELECT topic_id, timestamp FROM messages WHERE id = ?", (rowid,)).fetchone()
            except apsw.Error:  # a damaged or missing page
                row = None
            if row is None or row[0] not in self._topic_ids:
                misses += 1
                continue
            misses = 0
            rows.append((row[1], rowid, row[0]))
            self.topics[self._topic_ids[row[0]]].count += 1
        rows.sort()
        self._rows = rows
        self.start_ns = rows[0][0] if rows else 0
        self.duration_ns = rows[-1][0] - rows[0][0] if rows else 0
        problems.append(f"{self.path.name}: {len(rows)} message rows recovered from the readable pages; rows in "
                        "damaged or missing pages are lost")

    def messages(self, topics: set[str]) -> Iterator[tuple[str, int, bytes]]:
        import apsw

        for t_ns, rowid, tid in self._rows:
            topic = self._topic_ids[tid]
            if topic not in topics:
                continue
            try:
                row = self.db.execute("SELECT data FROM messages WHERE id = ?", (rowid,)).fetchone()
            except apsw.Error:
                continue  # its data lies in a damaged page (the index pass reports the shortfall)
            if row is not None:
                yield topic, t_ns, bytes(row[0])

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._vfs is not None:
            self._vfs.unregister()
            self._vfs = None
