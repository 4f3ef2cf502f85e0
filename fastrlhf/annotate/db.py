"""The feedback database: SQLite in WAL mode, one row per judgement, every write committed (and synced,
synchronous=FULL) before the function that made it returns, so the page says "saved" only after that.

  prompts     a prompt (JSON: a string or chat messages), shared by the items shown for it
  items       what an annotator judges: K responses to a prompt, kind 'rank' or 'redteam'; external_id
              names an item made elsewhere (an import, a row of `fastrlhf iterate --labeler human`), and
              makes adding it again a no-op; a closed item is no longer offered (a judgement of it is
              still saved)
  responses   one model output of an item, with the policy that wrote it and a random public id (the page
              sees only that id, so neither the order of writing nor the policy leaks)
  views       when an annotator first saw an item (time per item; the item they were on after a reload)
  judgements  one per (item, annotator): verdict ranked | all_bad | skip | flagged, ranks (rank per
              response in response-id order, 1 = best, equal = tie), red-team flags, note, seconds
"""
import contextlib
import json
import random
import secrets
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    kind TEXT NOT NULL CHECK (kind IN ('rank', 'redteam')),
    source TEXT NOT NULL,
    external_id TEXT UNIQUE,
    author TEXT,
    created REAL NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    public_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    policy TEXT NOT NULL,
    finished INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS views (
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL,
    shown REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('ranked', 'all_bad', 'skip', 'flagged')),
    ranks TEXT,
    flags TEXT,
    better TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    seconds REAL,
    created REAL NOT NULL,
    UNIQUE (item_id, annotator)
);
CREATE INDEX IF NOT EXISTS responses_by_item ON responses(item_id);
"""
LEASE_SECONDS = 600  # an item shown to someone else this recently goes to another annotator first


class Rejected(ValueError):
    """A submission the database refuses; `status` is the HTTP status the server answers with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def prompt_key(prompt):
    """How a prompt (a string or chat messages) is stored: its JSON, the key that makes it unique."""
    return json.dumps(prompt, ensure_ascii=False)


def prompt_text(prompt):
    """What the page shows for a prompt: the string, or chat messages one per line."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def ranks_from_groups(groups):
    """Ranks of tie groups, best group first: 1 + the number of responses in better groups (1, 2, 2, 4)."""
    ranks, better = [], 0
    for group in groups:
        ranks.append(better + 1)
        better += len(group)
    return ranks


class Store:
    """The database, shared by the server's threads: one connection, one lock, a transaction per call."""

    def __init__(self, path):
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OSError(f"{self.path}: SQLite cannot use WAL mode here (got {mode!r})")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(SCHEMA)
        with self._transaction() as conn:  # a file made before items could be closed
            if "closed" not in {row["name"] for row in conn.execute("PRAGMA table_info(items)")}:
                conn.execute("ALTER TABLE items ADD COLUMN closed INTEGER NOT NULL DEFAULT 0")

    def close(self):
        self.conn.close()

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT under the lock; any error rolls the whole call back."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _read(self, sql, args=()):
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    # ---- writing items -------------------------------------------------------------------------

    @staticmethod
    def _prompt_id(conn, prompt):
        key = prompt_key(prompt)
        conn.execute("INSERT OR IGNORE INTO prompts (prompt) VALUES (?)", (key,))
        return conn.execute("SELECT id FROM prompts WHERE prompt = ?", (key,)).fetchone()[0]

    @staticmethod
    def _insert_item(conn, prompt, responses, kind, source, external_id=None, author=None):
        """responses: [(text, policy, finished)]. Returns the item id (the existing one for a known external_id)."""
        if external_id is not None:
            row = conn.execute("SELECT id FROM items WHERE external_id = ?", (external_id,)).fetchone()
            if row:
                return row[0]
        item = conn.execute("INSERT INTO items (prompt_id, kind, source, external_id, author, created) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (Store._prompt_id(conn, prompt), kind, source, external_id,
                                                          author, time.time())).lastrowid
        conn.executemany("INSERT INTO responses (item_id, public_id, text, policy, finished) VALUES (?, ?, ?, ?, ?)",
                         [(item, secrets.token_hex(8), text, policy, int(finished))
                          for text, policy, finished in responses])
        return item

    def add_items(self, batch):
        """Ranking items of the prompt file; batch: [(prompt, [(text, policy, finished)])], one transaction."""
        with self._transaction() as conn:
            return [self._insert_item(conn, prompt, responses, "rank", "prompts") for prompt, responses in batch]

    def sampled_prompts(self):
        """The prompts (JSON keys) that already have a ranking item sampled for them."""
        rows = self._read("SELECT DISTINCT p.prompt FROM items i JOIN prompts p ON p.id = i.prompt_id "
                          "WHERE i.kind = 'rank' AND i.source = 'prompts'")
        return {row[0] for row in rows}

    def add_redteam(self, prompt, responses, author):
        """A red-team item written by `author`, as the page shows it (the time it was shown starts now)."""
        with self._transaction() as conn:
            item = self._insert_item(conn, prompt, responses, "redteam", "redteam", author=author)
            conn.execute("INSERT INTO views (item_id, annotator, shown) VALUES (?, ?, ?)", (item, author, time.time()))
            return self._item_view(conn, item, author)

    def import_judgements(self, records, source):
        """Ranking items made elsewhere, with the judgements made there: records [{external_id, prompt,
        responses: [text], annotations: [{annotator, ranks, seconds}]}], optionally with `policies` and
        `finished` per response (default: `source`, true). Items and judgements already imported are left
        as they are. Returns (items, new judgements)."""
        added = 0
        with self._transaction() as conn:
            for record in records:
                k = len(record["responses"])
                responses = zip(record["responses"], record.get("policies", [source] * k),
                                record.get("finished", [True] * k))
                item = self._insert_item(conn, record["prompt"], list(responses), "rank", source,
                                         external_id=record["external_id"])
                for a in record["annotations"]:
                    added += conn.execute(
                        "INSERT OR IGNORE INTO judgements (item_id, annotator, verdict, ranks, seconds, created) "
                        "VALUES (?, ?, 'ranked', ?, ?, ?)",
                        (item, a["annotator"], json.dumps(a["ranks"]), a.get("seconds"), time.time())).rowcount
        return len(records), added

    # ---- what an annotator sees ----------------------------------------------------------------

    def _item_view(self, conn, item_id, annotator):
        """The item as the page gets it: prompt text and responses shuffled per (item, annotator), anonymised."""
        row = conn.execute("SELECT i.id, i.kind, p.prompt FROM items i JOIN prompts p ON p.id = i.prompt_id "
                           "WHERE i.id = ?", (item_id,)).fetchone()
        responses = [{"id": r["public_id"], "text": r["text"]} for r in conn.execute(
            "SELECT public_id, text FROM responses WHERE item_id = ? ORDER BY id", (item_id,))]
        random.Random(f"{item_id}:{annotator}").shuffle(responses)
        return {"id": row["id"], "kind": row["kind"], "prompt": prompt_text(json.loads(row["prompt"])),
                "responses": responses}

    def next_item(self, annotator, per_item=1):
        """The next ranking item for `annotator`, or None: the one they were shown and did not judge yet,
        else the first with fewer than `per_item` judgements that nobody else has open, else any they
        have not judged. Records when they first saw it."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute(
                """SELECT i.id FROM items i
                   WHERE i.kind = 'rank' AND NOT i.closed
                     AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.item_id = i.id AND j.annotator = :me)
                   ORDER BY
                     EXISTS (SELECT 1 FROM views v WHERE v.item_id = i.id AND v.annotator = :me) DESC,
                     (SELECT COUNT(*) FROM judgements j WHERE j.item_id = i.id AND j.verdict != 'skip') >= :per_item,
                     EXISTS (SELECT 1 FROM views v WHERE v.item_id = i.id AND v.annotator != :me
                               AND v.shown > :recent AND NOT EXISTS (
                                 SELECT 1 FROM judgements j WHERE j.item_id = i.id AND j.annotator = v.annotator)),
                     i.id
                   LIMIT 1""", {"me": annotator, "per_item": per_item, "recent": now - LEASE_SECONDS}).fetchone()
            if row is None:
                return None
            conn.execute("INSERT OR IGNORE INTO views (item_id, annotator, shown) VALUES (?, ?, ?)",
                         (row[0], annotator, now))
            return self._item_view(conn, row[0], annotator)

    def progress(self, annotator):
        """Ranking items judged by `annotator`, of those they judged or may still be offered."""
        rows = self._read("SELECT (SELECT COUNT(*) FROM judgements j JOIN items i ON i.id = j.item_id "
                          "        WHERE j.annotator = :me AND i.kind = 'rank'), "
                          "(SELECT COUNT(*) FROM items i WHERE kind = 'rank' AND (NOT closed OR EXISTS "
                          "   (SELECT 1 FROM judgements j WHERE j.item_id = i.id AND j.annotator = :me)))",
                          {"me": annotator})
        return {"done": rows[0][0], "items": rows[0][1]}

    def pending_redteam(self, annotator):
        """The newest red-team item this annotator wrote and has not flagged yet, or None."""
        with self.lock:
            row = self.conn.execute("SELECT id FROM items i WHERE kind = 'redteam' AND author = ? AND NOT EXISTS "
                                    "(SELECT 1 FROM judgements j WHERE j.item_id = i.id) ORDER BY id DESC LIMIT 1",
                                    (annotator,)).fetchone()
            return self._item_view(self.conn, row[0], annotator) if row else None

    # ---- judgements ----------------------------------------------------------------------------

    def _open_item(self, conn, item_id, annotator, kind):
        """The item's public response ids in response-id order, once the submission may judge it."""
        row = conn.execute("SELECT kind, author FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None or row["kind"] != kind or (kind == "redteam" and row["author"] != annotator):
            raise Rejected(404, f"no {kind} item {item_id} for this annotator")
        if conn.execute("SELECT 1 FROM judgements WHERE item_id = ? AND annotator = ?", (item_id, annotator)).fetchone():
            raise Rejected(409, f"item {item_id} is already judged by {annotator}")
        return [r[0] for r in conn.execute("SELECT public_id FROM responses WHERE item_id = ? ORDER BY id", (item_id,))]

    @staticmethod
    def _seconds(conn, item_id, annotator, now):
        row = conn.execute("SELECT shown FROM views WHERE item_id = ? AND annotator = ?", (item_id, annotator)).fetchone()
        return now - row[0] if row else None

    def judge_ranking(self, annotator, item_id, verdict, order, note):
        """Stores a ranking (order: tie groups of public ids, best first), 'all_bad' or 'skip' (order empty)."""
        with self._transaction() as conn:
            ids = self._open_item(conn, item_id, annotator, "rank")
            ranks = None
            if verdict == "ranked":
                shown = [public_id for group in order for public_id in group]
                if sorted(shown) != sorted(ids) or any(not group for group in order):
                    raise Rejected(400, "the ranking must place every response of the item exactly once")
                rank_of = {public_id: rank for group, rank in zip(order, ranks_from_groups(order)) for public_id in group}
                ranks = json.dumps([rank_of[public_id] for public_id in ids])
            elif order:
                raise Rejected(400, f"a {verdict!r} verdict carries no ranking")
            now = time.time()
            return conn.execute("INSERT INTO judgements (item_id, annotator, verdict, ranks, note, seconds, created) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", (item_id, annotator, verdict, ranks, note,
                                                                  self._seconds(conn, item_id, annotator, now),
                                                                  now)).lastrowid

    def judge_redteam(self, annotator, item_id, flags, better, note, categories):
        """flags: {public id: (category, note)} for every response of the item."""
        with self._transaction() as conn:
            ids = self._open_item(conn, item_id, annotator, "redteam")
            if sorted(flags) != sorted(ids):
                raise Rejected(400, "flag every response of the item, and only those")
            for category, _ in flags.values():
                if category not in categories:
                    raise Rejected(400, f"unknown category {category!r}; expected one of {list(categories)}")
            stored = json.dumps([{"category": flags[i][0], "note": flags[i][1]} for i in ids])
            now = time.time()
            return conn.execute("INSERT INTO judgements (item_id, annotator, verdict, flags, better, note, seconds, "
                                "created) VALUES (?, ?, 'flagged', ?, ?, ?, ?, ?)",
                                (item_id, annotator, stored, better, note, self._seconds(conn, item_id, annotator, now),
                                 now)).lastrowid

    def set_closed(self, item_ids, closed):
        """Closes items (no longer offered) or opens them again."""
        with self._transaction() as conn:
            conn.executemany("UPDATE items SET closed = ? WHERE id = ?", [(int(closed), i) for i in item_ids])

    # ---- reading everything back (export, stats) -----------------------------------------------

    def _item_rows(self, item):
        return (self.conn.execute("SELECT * FROM responses WHERE item_id = ? ORDER BY id", (item["id"],)).fetchall(),
                self.conn.execute("SELECT * FROM judgements WHERE item_id = ? ORDER BY id", (item["id"],)).fetchall())

    def items_by_external_id(self, external_ids):
        """(item row, [response rows], [judgement rows]) for each external id, None where there is no such item."""
        found = []
        with self.lock:
            for external_id in external_ids:
                item = self.conn.execute("SELECT i.*, p.prompt FROM items i JOIN prompts p ON p.id = i.prompt_id "
                                         "WHERE i.external_id = ?", (external_id,)).fetchone()
                found.append((item, *self._item_rows(item)) if item else None)
        return found

    def judged_items(self, kind):
        """[(item row, [response rows], [judgement rows])] for every item of `kind` with a judgement."""
        with self.lock:
            items = self.conn.execute(
                "SELECT i.*, p.prompt FROM items i JOIN prompts p ON p.id = i.prompt_id WHERE i.kind = ? AND EXISTS "
                "(SELECT 1 FROM judgements j WHERE j.item_id = i.id) ORDER BY i.id", (kind,)).fetchall()
            return [(item, *self._item_rows(item)) for item in items]

    def judgements(self):
        return self._read("SELECT j.*, i.kind FROM judgements j JOIN items i ON i.id = j.item_id ORDER BY j.id")
