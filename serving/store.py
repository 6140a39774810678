"""Bounded store of recent predictions, shared by all API workers (sqlite), for /feedback.

Feedback may reach another worker than the prediction, so the store lives in one sqlite file.
It keeps the last `size` predictions and, separately, the running feedback counts per model and
true class, so online accuracy stays exact when old predictions are evicted. With API keys each
prediction records the key that asked for it (an id derived from the key's hash, never the key), and
feedback is taken only from that key.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    label INTEGER NOT NULL,
    created REAL NOT NULL,
    true_label INTEGER,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS feedback_counts (
    model TEXT NOT NULL,
    true_label INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    correct INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, true_label)
);
"""


class UnknownRequest(KeyError):
    """No stored prediction has this request id (never made, or evicted)."""


class FeedbackExists(ValueError):
    """Feedback for this request id was already recorded."""


class OtherOwner(PermissionError):
    """The prediction was made for another API key."""


class PredictionStore:
    def __init__(self, path: str | Path, size: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # the store lives as long as the server; no need to fsync
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(predictions)")}
        if "owner" not in columns:  # a store written before predictions had owners
            try:
                self.db.execute("ALTER TABLE predictions ADD COLUMN owner TEXT")
            except sqlite3.OperationalError:  # another worker added it first
                pass
        self.lock = threading.Lock()  # one connection per worker, used from several threads: one at a time

    def add(self, rows: list[tuple[str, str, int]], owner: str | None = None) -> None:
        """Record (request_id, model, label) rows, made for `owner` (None: no API keys), and evict beyond the
        newest `size`."""
        self.add_groups([(rows, owner)])

    def add_groups(self, groups: list[tuple[list[tuple[str, str, int]], str | None]]) -> None:
        """`add` for the rows of several requests, (rows, owner) each, in one transaction."""
        now = time.time()
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO predictions (request_id, model, label, created, owner) VALUES (?, ?, ?, ?, ?)",
                [(rid, model, label, now, owner) for rows, owner in groups for rid, model, label in rows],
            )
            self.db.execute("DELETE FROM predictions WHERE seq <= (SELECT MAX(seq) FROM predictions) - ?", (self.size,))

    def model_of(self, request_id: str, owner: str | None = None) -> str:
        """The model that made prediction `request_id`; UnknownRequest when it is not (or no longer) stored,
        OtherOwner when `owner` is given and the prediction was made for another."""
        with self.lock:
            row = self.db.execute("SELECT model, owner FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise UnknownRequest(request_id)
        if owner is not None and row[1] != owner:
            raise OtherOwner(request_id)
        return str(row[0])

    def feedback(self, request_id: str, true_label: int, owner: str | None = None) -> tuple[str, int, bool]:
        """Record the true label of a prediction (made for `owner`, when given); returns (model, predicted
        label, correct)."""
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT model, label, true_label, owner FROM predictions WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise UnknownRequest(request_id)
            model, label, previous, made_for = row
            if owner is not None and made_for != owner:
                raise OtherOwner(request_id)
            if previous is not None:
                raise FeedbackExists(request_id)
            correct = int(label == true_label)
            self.db.execute("UPDATE predictions SET true_label = ? WHERE request_id = ?", (true_label, request_id))
            self.db.execute(
                "INSERT INTO feedback_counts (model, true_label, total, correct) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (model, true_label) DO UPDATE SET total = total + 1, correct = correct + excluded.correct",
                (model, true_label, correct),
            )
        return model, label, bool(correct)

    def counts(self, model: str) -> dict[int, tuple[int, int]]:
        """true label -> (total, correct) of all feedback for `model`."""
        with self.lock:
            rows = self.db.execute(
                "SELECT true_label, total, correct FROM feedback_counts WHERE model = ?", (model,)
            ).fetchall()
        return {label: (total, correct) for label, total, correct in rows}

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]


class StoreWriter:
    """The API worker's writes to the store: the rows of concurrent requests go together.

    One write (a thread hop and a transaction) is in flight at a time; the rows of requests that arrive
    meanwhile wait and go in the next one, so under load one write serves several requests. Each request
    waits until its rows are written, so its request ids are known to every worker by the time it answers."""

    def __init__(self, store: PredictionStore) -> None:
        self.store = store
        self.waiting: list[tuple[list[tuple[str, str, int]], str | None, asyncio.Future[None]]] = []
        self.writing: asyncio.Task[None] | None = None

    async def add(self, rows: list[tuple[str, str, int]], owner: str | None = None) -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((rows, owner, written))
        if self.writing is None:
            self.writing = asyncio.ensure_future(self._write())
        await written

    async def _write(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    await asyncio.to_thread(self.store.add_groups, [(rows, owner) for rows, owner, _ in batch])
                except Exception as exc:
                    for *_, written in batch:
                        if not written.done():
                            written.set_exception(exc)
                    continue
                for *_, written in batch:
                    if not written.done():
                        written.set_result(None)
        finally:
            self.writing = None
