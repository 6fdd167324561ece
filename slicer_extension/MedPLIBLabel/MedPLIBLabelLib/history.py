"""Per-volume chat history and a bounded undo stack of segment slice replacements (no Qt)."""

from __future__ import annotations

import html
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Deque, Hashable, Optional

import numpy as np

__all__ = ["ChatTurn", "ChatHistory", "UndoEntry", "UndoStack"]


@dataclass
class ChatTurn:
    """One question and its answer. ``masks``: ``{segment name: voxel count}`` of the returned masks."""

    question: str
    answer: str
    time: float = field(default_factory=time.time)
    masks: dict[str, int] = field(default_factory=dict)
    task: str = ""
    axis: Optional[int] = None
    slice: Optional[int] = None
    latency_ms: Optional[float] = None
    error: str = ""

    @property
    def masks_summary(self) -> str:
        """E.g. "liver (1520 voxels), spleen (310 voxels)" or "no mask"."""
        if not self.masks:
            return "no mask"
        return ", ".join(f"{name} ({count} voxels)" for name, count in self.masks.items())

    def to_text(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.time))
        where = f" [axis {self.axis}, slice {self.slice}]" if self.slice is not None else ""
        answer = f"Error: {self.error}" if self.error else self.answer
        return f"[{when}]{where} Q: {self.question}\nA: {answer}\nMasks: {self.masks_summary}"

    def to_html(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.time))
        answer = (f"<span style='color:#b00'>Error: {html.escape(self.error)}</span>" if self.error
                  else html.escape(self.answer))
        return (f"<p><small>{when}</small><br><b>Q:</b> {html.escape(self.question)}<br><b>A:</b> {answer}"
                f"<br><small>{html.escape(self.masks_summary)}</small></p>")


class ChatHistory:
    """Chat turns keyed by volume (node id or image id); at most ``max_turns`` per volume and ``max_volumes``
    volumes (least recently used dropped)."""

    def __init__(self, max_turns: int = 200, max_volumes: int = 20):
        self.max_turns = max_turns
        self.max_volumes = max_volumes
        self._by_volume: "OrderedDict[Hashable, Deque[ChatTurn]]" = OrderedDict()

    def add(self, volume_id: Hashable, turn: ChatTurn) -> ChatTurn:
        turns = self._by_volume.pop(volume_id, None) or deque(maxlen=self.max_turns)
        turns.append(turn)
        self._by_volume[volume_id] = turns
        while len(self._by_volume) > self.max_volumes:
            self._by_volume.popitem(last=False)
        return turn

    def record(self, volume_id: Hashable, question: str, answer: str, **kw: Any) -> ChatTurn:
        return self.add(volume_id, ChatTurn(question=question, answer=answer, **kw))

    def turns(self, volume_id: Hashable) -> list[ChatTurn]:
        return list(self._by_volume.get(volume_id, ()))

    def last(self, volume_id: Hashable) -> Optional[ChatTurn]:
        turns = self._by_volume.get(volume_id)
        return turns[-1] if turns else None

    def clear(self, volume_id: Optional[Hashable] = None) -> None:
        if volume_id is None:
            self._by_volume.clear()
        else:
            self._by_volume.pop(volume_id, None)

    def volumes(self) -> list[Hashable]:
        return list(self._by_volume)

    def to_text(self, volume_id: Hashable) -> str:
        return "\n\n".join(t.to_text() for t in self.turns(volume_id))

    def to_html(self, volume_id: Hashable) -> str:
        return "".join(t.to_html() for t in self.turns(volume_id))

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_volume.values())


@dataclass
class UndoEntry:
    """The plane of a segment before a replacement: restore with ``protocol.write_slice(arr, previous, axis,
    index)``. ``axis`` None means ``previous`` is the whole KJI volume (a volume-scope replacement)."""

    segment_id: str
    axis: Optional[int]
    index: Optional[int]
    previous: np.ndarray
    group: Optional[Hashable] = None
    created: bool = False  # the segment did not exist before (undo removes it)
    offset: Optional[tuple] = None  # set: ``previous`` is a raw plane of the internal labelmap at this offset

    @property
    def nbytes(self) -> int:
        return int(self.previous.nbytes)


class UndoStack:
    """LIFO of :class:`UndoEntry`, bounded by entry count and total bytes (oldest dropped first).

    Entries pushed with the same ``group`` (e.g. the segments written by one answer) are undone together by
    :meth:`pop_group`.
    """

    def __init__(self, max_entries: int = 50, max_bytes: int = 256 * 1024 * 1024):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: list[UndoEntry] = []
        self._bytes = 0

    def push(self, segment_id: str, axis: Optional[int], index: Optional[int], previous: np.ndarray,
             group: Optional[Hashable] = None, created: bool = False, offset: Optional[tuple] = None) -> UndoEntry:
        prev = np.array(previous, copy=True)
        if prev.dtype != bool and prev.size and np.all((prev == 0) | (prev == 1)):
            prev = prev.astype(bool)  # binary segment planes: 1 byte per voxel is plenty
        entry = UndoEntry(str(segment_id), None if axis is None else int(axis),
                          None if index is None else int(index), prev, group, created,
                          None if offset is None else tuple(int(v) for v in offset))
        self._entries.append(entry)
        self._bytes += entry.nbytes
        self._trim()
        return entry

    def _trim(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or
                                 (self._bytes > self.max_bytes and len(self._entries) > 1)):
            self._bytes -= self._entries.pop(0).nbytes  # the newest entry is always kept

    def pop(self) -> Optional[UndoEntry]:
        if not self._entries:
            return None
        entry = self._entries.pop()
        self._bytes -= entry.nbytes
        return entry

    def pop_group(self) -> list[UndoEntry]:
        """All entries of the most recent group (a single entry when it has no group), newest first."""
        top = self.pop()
        if top is None:
            return []
        out = [top]
        if top.group is not None:
            while self._entries and self._entries[-1].group == top.group:
                out.append(self.pop())  # type: ignore[arg-type]
        return out

    def peek(self) -> Optional[UndoEntry]:
        return self._entries[-1] if self._entries else None

    def clear(self, segment_id: Optional[str] = None) -> None:
        if segment_id is None:
            self._entries.clear()
        else:
            self._entries = [e for e in self._entries if e.segment_id != segment_id]
        self._bytes = sum(e.nbytes for e in self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)
