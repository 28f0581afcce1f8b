"""The blind human-rating store (SQLite): rating items, one appended record per rating, aggregates, CSV."""
from __future__ import annotations

import csv
import io
import random
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from rlhflab.errors import UserError

CRITERIA = ("coherence", "relevance", "helpfulness", "completeness", "harmlessness")


CRITERIA_LABELS = {"coherence": "Coherence", "relevance": "Relevance", "helpfulness": "Helpfulness",
                   "completeness": "Completeness", "harmlessness": "Hallucination/toxicity (5 = none)"}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, prompt_index INTEGER NOT NULL, prompt TEXT NOT NULL,
    policy TEXT NOT NULL, response TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ratings (
    rating_id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL REFERENCES items(item_id),
    rater TEXT NOT NULL, coherence INTEGER NOT NULL, relevance INTEGER NOT NULL, helpfulness INTEGER NOT NULL,
    completeness INTEGER NOT NULL, harmlessness INTEGER NOT NULL, created TEXT NOT NULL);
"""


# Every statement is fixed text; values only ever travel as `?` parameters. The column lists come from CRITERIA,
# a constant of this module, never from input (tests/test_security.py checks this file for it).
_DELETE_UNRATED_ITEMS = "DELETE FROM items WHERE item_id NOT IN (SELECT DISTINCT item_id FROM ratings)"


_INSERT_ITEM = "INSERT INTO items (item_id, prompt_index, prompt, policy, response, created) VALUES (?, ?, ?, ?, ?, ?)"


_SELECT_ITEMS = "SELECT * FROM items ORDER BY prompt_index, policy"


_SELECT_ITEMS_WITH_DONE = ("SELECT i.*, (SELECT COUNT(*) FROM ratings r WHERE r.item_id = i.item_id AND r.rater = ?) "
                           "AS done FROM items i ORDER BY prompt_index")


_ITEM_EXISTS = "SELECT 1 FROM items WHERE item_id = ?"


_RATED_BY = "SELECT 1 FROM ratings WHERE item_id = ? AND rater = ?"


_INSERT_RATING = (f"INSERT INTO ratings (item_id, rater, {', '.join(CRITERIA)}, created) "
                  f"VALUES (?, ?, {', '.join('?' * len(CRITERIA))}, ?)")


_SELECT_RATINGS = ("SELECT r.rating_id, r.created, r.rater, i.policy, i.prompt_index, i.prompt, i.response, "
                   f"{', '.join('r.' + c for c in CRITERIA)} FROM ratings r JOIN items i USING (item_id) "
                   "ORDER BY r.rating_id")


_AGGREGATE = (f"SELECT i.policy, COUNT(*) AS n, {', '.join(f'AVG(r.{c}) AS {c}' for c in CRITERIA)} "
              "FROM ratings r JOIN items i USING (item_id) GROUP BY i.policy ORDER BY i.policy")


RATER_MAX_CHARS = 64


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RatingsStore:
    """Thread-safe SQLite store; each call opens its own connection (safe under Gradio's worker threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._conn() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _conn(self):
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # ---- items
    def replace_items(self, rows: list[dict]) -> int:
        """Store rating items {prompt_index, prompt, policy, response}; previous items (not ratings) replaced."""
        with self._lock, self._conn() as db:
            db.execute(_DELETE_UNRATED_ITEMS)
            for row in rows:
                db.execute(_INSERT_ITEM, (uuid.uuid4().hex[:12], int(row["prompt_index"]), row["prompt"],
                                          row["policy"], row["response"], _now()))
        return len(rows)

    def items(self) -> list[dict]:
        with self._conn() as db:
            return [dict(r) for r in db.execute(_SELECT_ITEMS)]

    def blind_task(self, rater: str, seed: int | None = None, max_responses: int | None = None,
                   skip_rated: bool = False) -> dict | None:
        """The prompt this rater has rated least, with its responses shuffled and policies hidden; with more policies
        than `max_responses`, the ones this rater has rated least come first, so each task shows new ones.
        `skip_rated` (one rating per rater and item, as the app asks): only responses this rater has not rated; None
        when there are none left."""
        with self._conn() as db:
            rows = [dict(r) for r in db.execute(_SELECT_ITEMS_WITH_DONE, (rater,))]
        if skip_rated:
            rows = [r for r in rows if not r["done"]]
        if not rows:
            return None
        by_prompt: dict[int, list[dict]] = {}
        for r in rows:
            by_prompt.setdefault(r["prompt_index"], []).append(r)
        rng = random.Random(seed)
        fewest = min(sum(r["done"] for r in group) for group in by_prompt.values())
        candidates = [k for k, group in by_prompt.items() if sum(r["done"] for r in group) == fewest]
        index = rng.choice(candidates)
        group = by_prompt[index]
        rng.shuffle(group)
        if max_responses:
            group = sorted(group, key=lambda r: r["done"])[:max_responses]  # stable: the shuffle decides ties
        return {"prompt_index": index, "prompt": group[0]["prompt"],
                "responses": [{"item_id": r["item_id"], "response": r["response"]} for r in group],
                "rated_before": fewest > 0}

    # ---- ratings
    def add_rating(self, item_id: str, scores: dict, rater: str = "anonymous") -> int:
        return self.add_ratings([(item_id, scores)], rater)[0]

    def add_ratings(self, ratings: list[tuple[str, dict]], rater: str = "anonymous",
                    once_per_rater: bool = False) -> list[int]:
        """Store (item_id, scores) pairs in one transaction: all of them, or (on any bad one) none. With
        `once_per_rater` (the app's rule) an item this rater has rated before refuses the whole submission."""
        checked = [(item_id, _checked_scores(scores)) for item_id, scores in ratings]
        rater = str(rater or "anonymous").strip()[:RATER_MAX_CHARS] or "anonymous"
        with self._lock, self._conn() as db:
            ids = []
            for item_id, values in checked:
                if not isinstance(item_id, str) or db.execute(_ITEM_EXISTS, (item_id,)).fetchone() is None:
                    raise UserError(f"unknown rating item {item_id!r}; reload the rating tab.")
                if once_per_rater and db.execute(_RATED_BY, (item_id, rater)).fetchone() is not None:
                    raise UserError("You have already rated one of these responses (each response is rated once by "
                                    "each rater); press Next prompt for new ones.")
                ids.append(int(db.execute(_INSERT_RATING, (item_id, rater, *values, _now())).lastrowid))
            return ids

    def ratings(self) -> list[dict]:
        with self._conn() as db:
            return [dict(r) for r in db.execute(_SELECT_RATINGS)]

    def aggregate(self) -> list[dict]:
        """One row per policy: mean of each criterion and the number of ratings behind it."""
        with self._conn() as db:
            rows = db.execute(_AGGREGATE).fetchall()
        return [dict(r) for r in rows]

    def csv_text(self, with_responses: bool = True) -> str:
        """One row per rating with its policy. Without the response text (what the app offers raters), the
        export cannot be used to tell which policy wrote a response that is still waiting to be rated."""
        rows = self.ratings()
        buf = io.StringIO()
        fields = ["rating_id", "created", "rater", "policy", "prompt_index", "prompt",
                  *(["response"] if with_responses else []), *CRITERIA]
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()


def _checked_scores(scores: dict) -> list[int]:
    """The five criteria as whole numbers 1-5 (CRITERIA order); a UserError names the first bad one."""
    missing = [c for c in CRITERIA if c not in scores]
    if missing:
        raise UserError(f"rating is missing {', '.join(missing)}; rate every criterion 1-5.")
    values = []
    for c in CRITERIA:
        given = scores[c]
        try:
            v = int(given)
        except (TypeError, ValueError):
            raise UserError(f"rating {c} must be a whole number 1-5, got {given!r}.") from None
        if isinstance(given, bool) or not 1 <= v <= 5 or v != given and str(v) != str(given).strip():
            raise UserError(f"rating {c} must be between 1 and 5, got {given!r}.")
        values.append(v)
    return values


def preference_pairs(ratings: list[dict]) -> tuple[list[dict], int]:
    """The rated comparisons behind the ratings (RatingsStore.ratings() rows): every two different responses one
    rater scored for the same prompt, the one with the higher mean over the five criteria preferred (a rater's
    repeated ratings of a response averaged). ([{"rater", "prompt", "preferred", "other"}], pairs the rater tied)."""
    by_task: dict[tuple, dict[str, list[float]]] = {}
    for r in ratings:
        scores = by_task.setdefault((r["rater"], r["prompt"]), {})
        scores.setdefault(r["response"], []).append(sum(r[c] for c in CRITERIA) / len(CRITERIA))
    pairs, ties = [], 0
    for (rater, prompt), scores in by_task.items():
        means = sorted((sum(v) / len(v), response) for response, v in scores.items())
        for i in range(len(means)):
            for j in range(i + 1, len(means)):
                (low, low_response), (high, high_response) = means[i], means[j]
                if high == low:
                    ties += 1
                else:
                    pairs.append({"rater": rater, "prompt": prompt, "preferred": high_response,
                                  "other": low_response})
    return pairs, ties


def aggregate_markdown(rows: list[dict]) -> str:
    from rlhflab.store.cards import markdown_table

    if not rows:
        return "No ratings yet."
    header = ["policy", *[CRITERIA_LABELS[c] for c in CRITERIA], "ratings (n)"]
    return markdown_table(header, [[r["policy"], *[f"{r[c]:.2f}" for c in CRITERIA], r["n"]] for r in rows]) + \
        "\n\nMeans on a 1–5 scale; each cell averages the n ratings of that policy."
