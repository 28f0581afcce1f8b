"""The arena's battle store (SQLite, append-only): one record per battle shown, one per vote, and the rules of who
may vote on what. Nothing here can delete a battle or change a vote; SQLite triggers refuse it even to raw SQL.

A battle is written when it is shown (its two policies, their checkpoint revisions, the prompt and the fixed
generation settings), completed once when both answers have finished streaming (the answers, whether each was cut
at the token budget, and whether an answer named a model), and then voted on at most once, by the browser session
it was shown to. The voter is a Hugging Face user ('hf') on a Space, else the browser session ('session').
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rlhflab.errors import UserError

VOTES = ("A", "B", "tie", "both_bad")
VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both are bad"}
VOTER_KINDS = ("hf", "session")
DAILY_CAP_ENV = "RLHFLAB_ARENA_DAILY_CAP"
DEFAULT_DAILY_CAP = 200  # votes per voter per UTC day; a person fights far fewer battles than that
_BATTLE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_FIELD_CHARS = 200_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    battle_id TEXT PRIMARY KEY, created TEXT NOT NULL, session TEXT NOT NULL,
    policy_a TEXT NOT NULL, policy_b TEXT NOT NULL, revision_a TEXT NOT NULL, revision_b TEXT NOT NULL,
    prompt TEXT NOT NULL, prompt_source TEXT NOT NULL, settings TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0, completed TEXT, answer_a TEXT, answer_b TEXT,
    tokens_a INTEGER, tokens_b INTEGER, cut_a INTEGER, cut_b INTEGER, named_model TEXT,
    CHECK (policy_a <> policy_b));
CREATE TABLE IF NOT EXISTS votes (
    vote_id INTEGER PRIMARY KEY AUTOINCREMENT, battle_id TEXT NOT NULL UNIQUE REFERENCES battles(battle_id),
    created TEXT NOT NULL, voter TEXT NOT NULL, voter_kind TEXT NOT NULL CHECK (voter_kind IN ('hf', 'session')),
    vote TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'both_bad')), UNIQUE (battle_id, voter));
CREATE INDEX IF NOT EXISTS votes_by_voter ON votes (voter, created);
CREATE TRIGGER IF NOT EXISTS votes_are_never_changed BEFORE UPDATE ON votes
    BEGIN SELECT RAISE(ABORT, 'votes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS votes_are_never_deleted BEFORE DELETE ON votes
    BEGIN SELECT RAISE(ABORT, 'votes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS battles_are_never_deleted BEFORE DELETE ON battles
    BEGIN SELECT RAISE(ABORT, 'battles are append-only'); END;
CREATE TRIGGER IF NOT EXISTS battles_complete_once BEFORE UPDATE ON battles WHEN OLD.complete = 1
    BEGIN SELECT RAISE(ABORT, 'a completed battle is never changed'); END;
CREATE TRIGGER IF NOT EXISTS battles_keep_what_was_shown BEFORE UPDATE ON battles
    WHEN NEW.battle_id IS NOT OLD.battle_id OR NEW.session IS NOT OLD.session OR NEW.policy_a IS NOT OLD.policy_a
      OR NEW.policy_b IS NOT OLD.policy_b OR NEW.prompt IS NOT OLD.prompt OR NEW.settings IS NOT OLD.settings
      OR NEW.created IS NOT OLD.created
    BEGIN SELECT RAISE(ABORT, 'what a battle showed is never changed'); END;
"""

# Every statement is fixed text; values only travel as `?` parameters (tests/test_votes.py checks this file for it).
_BEGIN_READ, _BEGIN_WRITE, _COMMIT, _ROLLBACK = "BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"
_INSERT_BATTLE = ("INSERT INTO battles (battle_id, created, session, policy_a, policy_b, revision_a, revision_b, "
                  "prompt, prompt_source, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SELECT_BATTLE = "SELECT * FROM battles WHERE battle_id = ?"
_COMPLETE_BATTLE = ("UPDATE battles SET complete = 1, completed = ?, answer_a = ?, answer_b = ?, tokens_a = ?, "
                    "tokens_b = ?, cut_a = ?, cut_b = ?, named_model = ? WHERE battle_id = ? AND complete = 0")
_SELECT_VOTE = "SELECT * FROM votes WHERE battle_id = ?"
_COUNT_VOTER_SINCE = "SELECT COUNT(*) FROM votes WHERE voter = ? AND created >= ?"
_INSERT_VOTE = "INSERT INTO votes (battle_id, created, voter, voter_kind, vote) VALUES (?, ?, ?, ?, ?)"
_SELECT_VOTED = ("SELECT b.battle_id, b.created AS shown, v.created AS voted, b.policy_a, b.policy_b, b.revision_a, "
                 "b.revision_b, b.prompt, b.prompt_source, b.settings, b.answer_a, b.answer_b, b.tokens_a, "
                 "b.tokens_b, b.cut_a, b.cut_b, b.named_model, v.vote, v.voter, v.voter_kind "
                 "FROM votes v JOIN battles b USING (battle_id) ORDER BY v.vote_id")
_COUNT_BATTLES = "SELECT COUNT(*) AS shown, COALESCE(SUM(complete), 0) AS completed FROM battles"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def daily_cap(env: dict | None = None) -> int | None:
    """Votes one voter may cast per UTC day, from RLHFLAB_ARENA_DAILY_CAP (0 or 'none': no cap)."""
    env = os.environ if env is None else env
    raw = (env.get(DAILY_CAP_ENV) or "").strip().lower()
    if not raw:
        return DEFAULT_DAILY_CAP
    if raw in ("0", "none", "off"):
        return None
    try:
        cap = int(raw)
    except ValueError:
        raise UserError(f"{DAILY_CAP_ENV}={raw!r} is not a whole number; set it to the votes a voter may cast per "
                        f"day (0 for no cap).") from None
    if cap < 0:
        raise UserError(f"{DAILY_CAP_ENV} must be 0 (no cap) or more, got {cap}.")
    return cap


def voter_identity(profile, session_hash: str | None, oauth_required: bool) -> tuple[str, str]:
    """(voter id, voter kind) for a request. `profile` is a gr.OAuthProfile or None. With `oauth_required` (on a
    Space) only a signed-in Hugging Face user may vote; elsewhere the voter is the browser session."""
    username = getattr(profile, "username", None) if profile is not None else None
    if username:
        return f"hf:{username}", "hf"
    if oauth_required:
        raise UserError("Sign in with Hugging Face (the button at the top of the tab) to vote; votes without a "
                        "signed-in account are not counted on this Space.")
    if not session_hash:
        raise UserError("This request has no browser session; open the app in a browser to vote.")
    return f"session:{session_hash}", "session"


def model_names_in(text: str, names) -> list[str]:
    """The names in `names` that `text` mentions as whole words (any case): an answer that names its own model or
    another policy unblinds the battle, so the Arena drops such battles from the leaderboard."""
    found = []
    for name in names:
        name = str(name).strip()
        if len(name) < 3:
            continue
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text or "", flags=re.IGNORECASE):
            found.append(name)
    return sorted(set(found), key=found.index)


class VotesStore:
    """Thread- and process-safe SQLite store; each call opens its own connection, writes take the write lock first
    (BEGIN IMMEDIATE), so the checks and the insert of a vote are one atomic step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _conn(self, write: bool = False):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute(_BEGIN_WRITE if write else _BEGIN_READ)
            try:
                yield db
            except BaseException:
                db.execute(_ROLLBACK)
                raise
            db.execute(_COMMIT)
        finally:
            db.close()

    # ---- battles
    def start_battle(self, session: str, policy_a: str, policy_b: str, prompt: str, settings: dict,
                     revision_a: str = "", revision_b: str = "", prompt_source: str = "typed") -> str:
        """Record a battle as it is shown to `session`; returns its id (random, unguessable)."""
        if not session:
            raise UserError("A battle needs a browser session; open the app in a browser.")
        if policy_a == policy_b:
            raise UserError("A battle needs two different policies.")
        battle_id = uuid.uuid4().hex
        with self._lock, self._conn(write=True) as db:
            db.execute(_INSERT_BATTLE, (battle_id, _iso(_now()), str(session), str(policy_a), str(policy_b),
                                        str(revision_a), str(revision_b), str(prompt)[:MAX_FIELD_CHARS],
                                        str(prompt_source), json.dumps(settings, sort_keys=True)))
        return battle_id

    def complete_battle(self, battle_id: str, session: str, answer_a: str, answer_b: str, *, cut_a: bool,
                        cut_b: bool, tokens_a: int = 0, tokens_b: int = 0, named_model: list[str] | None = None) -> None:
        """Store both finished answers, once, from the session the battle was shown to."""
        with self._lock, self._conn(write=True) as db:
            battle = self._battle(db, battle_id, session)
            if battle["complete"]:
                raise UserError("This battle's answers are already stored; start a new battle.")
            db.execute(_COMPLETE_BATTLE, (_iso(_now()), str(answer_a)[:MAX_FIELD_CHARS],
                                          str(answer_b)[:MAX_FIELD_CHARS], int(tokens_a), int(tokens_b),
                                          int(bool(cut_a)), int(bool(cut_b)),
                                          ", ".join(named_model) if named_model else None, battle_id))

    @staticmethod
    def _battle(db, battle_id, session) -> sqlite3.Row:
        """The battle `battle_id` if it was shown to `session`; else a UserError and nothing changes."""
        if not isinstance(battle_id, str) or not _BATTLE_ID.match(battle_id):
            raise UserError("That is not a battle of this arena; start a new battle and vote on it.")
        battle = db.execute(_SELECT_BATTLE, (battle_id,)).fetchone()
        if battle is None:
            raise UserError("There is no such battle; start a new battle and vote on it.")
        if not session or battle["session"] != str(session):
            raise UserError("This battle was shown to another browser session; you can vote only on the battles "
                            "you were shown. Start a new battle.")
        return battle

    def battle(self, battle_id: str) -> dict | None:
        with self._conn() as db:
            row = db.execute(_SELECT_BATTLE, (battle_id,)).fetchone()
        return dict(row) if row else None

    # ---- votes
    def record_vote(self, battle_id: str, session: str, vote: str, voter: str, voter_kind: str,
                    cap: int | None = DEFAULT_DAILY_CAP, now: datetime | None = None) -> dict:
        """Append one vote, if every rule allows it; else a UserError sentence, and nothing changes.

        Rules: the battle exists and was shown to `session`; its answers are complete; it has no vote yet (one vote
        per battle, so one per voter per battle); the voter has cast fewer than `cap` votes since 00:00 UTC."""
        if vote not in VOTES:
            raise UserError(f"A vote is one of {', '.join(VOTES)}; got {vote!r}.")
        if voter_kind not in VOTER_KINDS or not voter:
            raise UserError("A vote needs a voter: sign in with Hugging Face, or vote from a browser session.")
        now = now or _now()
        with self._lock, self._conn(write=True) as db:
            battle = self._battle(db, battle_id, session)
            if not battle["complete"]:
                raise UserError("Wait until both answers have finished, then vote.")
            if db.execute(_SELECT_VOTE, (battle_id,)).fetchone() is not None:
                raise UserError("This battle already has its vote; a vote cannot be changed. Start a new battle.")
            if cap is not None:
                midnight = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
                done = db.execute(_COUNT_VOTER_SINCE, (voter, _iso(midnight))).fetchone()[0]
                if done >= cap:
                    tomorrow = midnight + timedelta(days=1)
                    raise UserError(f"You have cast today's {cap} votes (the arena's daily cap per voter); come back "
                                    f"after {tomorrow:%H:%M} UTC.")
            vote_id = db.execute(_INSERT_VOTE, (battle_id, _iso(now), voter, voter_kind, vote)).lastrowid
        return {"vote_id": vote_id, "battle_id": battle_id, "vote": vote, "policy_a": battle["policy_a"],
                "policy_b": battle["policy_b"], "voter_kind": voter_kind}

    def voted_battles(self) -> list[dict]:
        """Every voted battle with its vote, in voting order."""
        with self._conn() as db:
            rows = [dict(r) for r in db.execute(_SELECT_VOTED)]
        for r in rows:
            r["settings"] = json.loads(r["settings"])
            r["cut_a"], r["cut_b"] = bool(r["cut_a"]), bool(r["cut_b"])
        return rows

    def counts(self) -> dict:
        with self._conn() as db:
            row = dict(db.execute(_COUNT_BATTLES).fetchone())
        voted = self.voted_battles()
        row["voted"] = len(voted)
        row["named_a_model"] = sum(1 for r in voted if r["named_model"])
        return row


def leaderboard_battles(rows: list[dict]) -> tuple[list[dict], int]:
    """(the voted battles the leaderboard counts, how many it drops because an answer named a model)."""
    kept = [r for r in rows if not r.get("named_model")]
    return kept, len(rows) - len(kept)


def preference_records(rows: list[dict]) -> tuple[list[dict], dict]:
    """The decided battles as TRL's conversational preference format ({"prompt": [user message], "chosen":
    [assistant message], "rejected": [...]}), and what was left out (ties, both bad, answers that named a model)."""
    records, left_out = [], {"tie": 0, "both_bad": 0, "named_a_model": 0}
    for r in rows:
        if r["vote"] in ("tie", "both_bad"):
            left_out[r["vote"]] += 1
            continue
        if r.get("named_model"):
            left_out["named_a_model"] += 1
            continue
        chosen, rejected = (r["answer_a"], r["answer_b"]) if r["vote"] == "A" else (r["answer_b"], r["answer_a"])
        records.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                        "battle_id": r["battle_id"]})
    return records, left_out
