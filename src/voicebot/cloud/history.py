"""Conversation history per device: SQLite locally, DynamoDB in the cloud. Both behind ``HistoryStore``."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from voicebot.protocol import horizon_id, request_id_time

log = logging.getLogger(__name__)

Taken = Literal["taken", "duplicate", "older"]


@dataclass(frozen=True)
class Turn:
    """One question and its answer."""

    request_id: str
    question: str
    answer: str
    ts: int  # epoch ms


class HistoryStore(Protocol):
    def recent(self, thing: str, limit: int) -> list[Turn]:
        """The last ``limit`` turns of ``thing``, oldest first."""

    def append(self, thing: str, turn: Turn) -> None: ...

    def forget(self, thing: str, request_id: str) -> bool:
        """Remove the turn of ``request_id`` (one of the recent ones) if it is there; whether it was."""

    def latest_request(self, thing: str) -> str | None:
        """The newest request this device has asked (a newer one supersedes everything older). A consistent read."""

    def take_request(self, thing: str, request_id: str) -> Taken:
        """Make ``request_id`` the device's latest request, atomically, unless it is not newer (``is_newer``):
        "taken"; "duplicate" when it already is the latest (a second delivery); "older" when a newer one is."""


class GuardedHistory:
    """One turn's view of a ``HistoryStore`` that never lets the store decide whether the person hears an answer.

    What a store failure means for the person (decided here, for SQLite and DynamoDB alike):
    * history unreadable -> the model answers without the earlier turns;
    * the request-ordering write fails -> answered anyway (a rare duplicate or late answer is better than silence);
    * "has a newer question come?" unreadable -> assumed not;
    * history unwritable -> the answer was already spoken; the turn is missing from the next prompt.
    Each failure is one log line and one entry in ``problems`` (the chat publishes it as an ``error`` event). After
    the first failure the store is not asked again this turn (a stalled table would cost its timeout every time),
    and no call starts when less than ``call_budget_s`` is left before ``reserve_s`` (time the apology needs).
    """

    def __init__(self, store: HistoryStore, *, time_left_s: Callable[[], float] | None = None,
                 call_budget_s: float = 4.0, reserve_s: float = 6.0) -> None:
        self.store = store
        self.time_left_s = time_left_s
        self.call_budget_s = call_budget_s
        self.reserve_s = reserve_s
        self.problems: list[str] = []
        self.reported = 0  # how many of ``problems`` were published
        self._down = False

    def _call(self, what: str, call: Callable[[], Any], fallback: Any) -> Any:
        if self._down:
            return fallback
        if self.time_left_s is not None and self.time_left_s() - self.reserve_s < self.call_budget_s:
            self._fail(what, "no time left for it")
            return fallback
        try:
            return call()
        except Exception as exc:
            text = str(exc) or type(exc).__name__
            self._fail(what, f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text)
            return fallback

    def _fail(self, what: str, why: str) -> None:
        self._down = True
        line = f"history store failed ({what}: {why[:300]}); answering without it this turn"
        log.error("chat: %s", line)
        self.problems.append(line)

    def recent(self, thing: str, limit: int) -> list[Turn]:
        return self._call("read history", lambda: self.store.recent(thing, limit), [])

    def append(self, thing: str, turn: Turn) -> None:
        self._call("write history", lambda: self.store.append(thing, turn), None)

    def forget(self, thing: str, request_id: str) -> bool:
        return self._call("forget a replaced turn", lambda: self.store.forget(thing, request_id), False)

    def latest_request(self, thing: str) -> str | None:
        return self._call("read the latest request", lambda: self.store.latest_request(thing), None)

    def take_request(self, thing: str, request_id: str) -> Taken:
        return self._call("order the request", lambda: self.store.take_request(thing, request_id), "taken")


LATEST = "#latest"  # sorts before every "<epoch ms>#<requestId>" turn key


def sort_key(turn: Turn) -> str:
    """Time-ordered and unique even for two turns in the same millisecond."""
    return f"{turn.ts:013d}#{turn.request_id}"


class SqliteHistory:
    """History in one SQLite file (the embedded default). Safe to share between threads."""

    def __init__(self, path: str | Path, *, keep_days: int = 7) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.keep_ms = keep_days * 86_400_000
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS turns (thing TEXT NOT NULL, turn TEXT NOT NULL, request_id TEXT NOT NULL,"
            " question TEXT NOT NULL, answer TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (thing, turn))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS latest (thing TEXT PRIMARY KEY, request_id TEXT NOT NULL,"
                         " timed INTEGER NOT NULL DEFAULT 1)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(latest)")}
        if "timed" not in columns:  # a history file of an earlier version
            self._db.execute("ALTER TABLE latest ADD COLUMN timed INTEGER NOT NULL DEFAULT 1")
        self._db.commit()

    def recent(self, thing: str, limit: int) -> list[Turn]:
        if limit <= 0:
            return []
        oldest = int(time.time() * 1000) - self.keep_ms
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, question, answer, ts FROM turns WHERE thing = ? AND ts >= ?"
                " ORDER BY turn DESC LIMIT ?",
                (thing, oldest, limit),
            ).fetchall()
        return [Turn(*row) for row in reversed(rows)]

    def append(self, thing: str, turn: Turn) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO turns VALUES (?, ?, ?, ?, ?, ?)",
                (thing, sort_key(turn), turn.request_id, turn.question, turn.answer, turn.ts),
            )
            self._db.execute("DELETE FROM turns WHERE ts < ?", (int(time.time() * 1000) - self.keep_ms,))
            self._db.commit()

    def forget(self, thing: str, request_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM turns WHERE thing = ? AND request_id = ?", (thing, request_id))
            self._db.commit()
        return cursor.rowcount > 0

    def latest_request(self, thing: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT request_id FROM latest WHERE thing = ?", (thing,)).fetchone()
        return row[0] if row else None

    def take_request(self, thing: str, request_id: str) -> Taken:
        timed = request_id_time(request_id) is not None
        # One statement decides and writes (no check-then-set), by ``is_newer``: a UUIDv7 id replaces an untimed one
        # or a smaller one, and a plausible one replaces one beyond the horizon; any other id replaces whatever is
        # not itself.
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO latest (thing, request_id, timed) VALUES (?2, ?3, ?4) ON CONFLICT (thing) DO UPDATE"
                " SET request_id = excluded.request_id, timed = excluded.timed"
                " WHERE CASE WHEN excluded.timed"
                "  THEN latest.timed = 0 OR latest.request_id < excluded.request_id"
                "   OR (latest.request_id > ?1 AND excluded.request_id <= ?1)"
                "  ELSE latest.request_id <> excluded.request_id END",
                (horizon_id(), thing, request_id, int(timed)),
            )
            self._db.commit()
            if cursor.rowcount == 1:
                return "taken"
            row = self._db.execute("SELECT request_id FROM latest WHERE thing = ?", (thing,)).fetchone()
        return "duplicate" if row and row[0] == request_id else "older"

    def close(self) -> None:
        with self._lock:
            self._db.close()


class DynamoHistory:
    """History in DynamoDB: partition key ``thing``, sort key ``turn`` (time#requestId), TTL ``expires_at``."""

    def __init__(self, table: Any, *, keep_days: int = 7) -> None:
        self.table = table  # boto3 Table resource
        self.keep_days = keep_days

    def recent(self, thing: str, limit: int) -> list[Turn]:
        if limit <= 0:
            return []
        from boto3.dynamodb.conditions import Key

        # One query, newest first, bounded: the cost does not grow with the length of the conversation.
        resp = self.table.query(
            KeyConditionExpression=Key("thing").eq(thing) & Key("turn").gt("0"), ScanIndexForward=False, Limit=limit,
            ProjectionExpression="request_id, question, answer, ts, expires_at",
        )
        now = int(time.time())
        items = [i for i in resp.get("Items", []) if int(i.get("expires_at", now + 1)) > now]
        return [Turn(str(i["request_id"]), str(i["question"]), str(i["answer"]), int(i["ts"])) for i in reversed(items)]

    def forget(self, thing: str, request_id: str, *, among: int = 10) -> bool:
        # The key holds the turn's time, which the caller does not know: look among the newest ``among`` turns (a
        # replaced request is always one of the last few), then delete by the full key.
        from boto3.dynamodb.conditions import Key

        resp = self.table.query(KeyConditionExpression=Key("thing").eq(thing) & Key("turn").gt("0"),
                                ScanIndexForward=False, Limit=among, ProjectionExpression="#t, request_id",
                                ExpressionAttributeNames={"#t": "turn"})
        keys = [i["turn"] for i in resp.get("Items", []) if i.get("request_id") == request_id]
        for turn in keys:
            self.table.delete_item(Key={"thing": thing, "turn": turn})
        return bool(keys)

    def latest_request(self, thing: str) -> str | None:
        item = self.table.get_item(Key={"thing": thing, "turn": LATEST}, ProjectionExpression="request_id",
                                   ConsistentRead=True).get("Item")
        return str(item["request_id"]) if item else None

    def take_request(self, thing: str, request_id: str) -> Taken:
        from botocore.exceptions import ClientError

        timed = request_id_time(request_id) is not None
        item = {"thing": thing, "turn": LATEST, "request_id": request_id, "timed": timed,
                "expires_at": int(time.time()) + self.keep_days * 86_400}
        if timed:  # the same rule as SqliteHistory.take_request, as a condition DynamoDB checks on the write
            condition = "attribute_not_exists(request_id) OR timed = :untimed OR request_id < :id"
            values: dict[str, Any] = {":untimed": False, ":id": request_id}
            horizon = horizon_id()
            if request_id <= horizon:  # a plausible id also replaces one beyond the horizon
                condition += " OR request_id > :horizon"
                values[":horizon"] = horizon
        else:
            condition, values = "attribute_not_exists(request_id) OR request_id <> :id", {":id": request_id}
        try:
            self.table.put_item(Item=item, ConditionExpression=condition, ExpressionAttributeValues=values)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return "duplicate" if self.latest_request(thing) == request_id else "older"
        return "taken"

    def append(self, thing: str, turn: Turn) -> None:
        self.table.put_item(Item={
            "thing": thing, "turn": sort_key(turn), "request_id": turn.request_id, "question": turn.question,
            "answer": turn.answer, "ts": turn.ts, "expires_at": turn.ts // 1000 + self.keep_days * 86_400,
        })
