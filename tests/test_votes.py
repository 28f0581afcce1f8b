"""The arena's vote store: every identity rule, append-only storage, the export's format."""
from __future__ import annotations

import ast
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

import rlhflab.store.votes as votes_module
from rlhflab.errors import UserError
from rlhflab.store.votes import (
    VotesStore,
    daily_cap,
    leaderboard_battles,
    model_names_in,
    preference_records,
    voter_identity,
)

SETTINGS = {"temperature": 0.7, "max_new_tokens": 192}


def shown(store: VotesStore, session="s1", a="base", b="dpo", complete=True, **kw) -> str:
    bid = store.start_battle(session, a, b, "Name a fruit.", SETTINGS, "rev-a", "rev-b")
    if complete:
        store.complete_battle(bid, session, "An apple.", "A pear, I think.", cut_a=False, cut_b=True, **kw)
    return bid


@pytest.fixture
def store(tmp_path):
    return VotesStore(tmp_path / "votes.sqlite")


def test_a_vote_is_stored_with_everything_the_battle_showed(store):
    bid = shown(store)
    out = store.record_vote(bid, "s1", "A", "session:s1", "session")
    assert out["policy_a"] == "base" and out["vote"] == "A"
    [row] = store.voted_battles()
    assert row["battle_id"] == bid and row["prompt"] == "Name a fruit." and row["settings"] == SETTINGS
    assert (row["revision_a"], row["revision_b"]) == ("rev-a", "rev-b")
    assert (row["cut_a"], row["cut_b"]) == (False, True) and row["answer_b"] == "A pear, I think."
    assert (row["voter"], row["voter_kind"]) == ("session:s1", "session") and row["voted"] >= row["shown"]


def test_one_vote_per_battle_and_a_replay_changes_nothing(store):
    bid = shown(store)
    store.record_vote(bid, "s1", "A", "session:s1", "session")
    for vote in ("A", "B"):
        with pytest.raises(UserError, match="already has its vote"):
            store.record_vote(bid, "s1", vote, "session:s1", "session")
    assert [r["vote"] for r in store.voted_battles()] == ["A"]


def test_only_the_session_shown_the_battle_may_vote(store):
    bid = shown(store, session="s1")
    with pytest.raises(UserError, match="another browser session"):
        store.record_vote(bid, "s2", "B", "session:s2", "session")
    with pytest.raises(UserError, match="another browser session"):
        store.record_vote(bid, "", "B", "hf:someone", "hf")
    assert store.voted_battles() == []


def test_no_vote_before_both_answers_are_complete(store):
    bid = shown(store, complete=False)
    with pytest.raises(UserError, match="finished"):
        store.record_vote(bid, "s1", "A", "session:s1", "session")
    store.complete_battle(bid, "s1", "x", "y", cut_a=False, cut_b=False)
    with pytest.raises(UserError, match="already stored"):  # answers are stored once
        store.complete_battle(bid, "s1", "other", "other", cut_a=False, cut_b=False)
    assert store.record_vote(bid, "s1", "tie", "session:s1", "session")["vote"] == "tie"


@pytest.mark.parametrize("forged", ["0" * 32, "not-an-id", "'; DROP TABLE votes;--", None, 7, "F" * 32])
def test_forged_or_unknown_battle_ids_get_a_sentence_and_change_nothing(store, forged):
    shown(store)
    with pytest.raises(UserError, match="battle"):
        store.record_vote(forged, "s1", "A", "session:s1", "session")
    assert store.voted_battles() == [] and store.counts()["shown"] == 1


def test_bad_vote_values_are_refused(store):
    bid = shown(store)
    for bad in ("C", "", None, "a"):
        with pytest.raises(UserError, match="one of"):
            store.record_vote(bid, "s1", bad, "session:s1", "session")
    with pytest.raises(UserError, match="voter"):
        store.record_vote(bid, "s1", "A", "x", "anonymous")


def test_the_daily_cap_counts_per_voter_and_resets_at_midnight_utc(store):
    day = datetime(2026, 1, 5, 23, 0, tzinfo=timezone.utc)
    for _ in range(2):
        store.record_vote(shown(store), "s1", "A", "hf:ann", "hf", cap=2, now=day)
    with pytest.raises(UserError, match="daily cap"):
        store.record_vote(shown(store), "s1", "A", "hf:ann", "hf", cap=2, now=day)
    # another voter is not capped by ann's votes; ann votes again the next UTC day
    store.record_vote(shown(store), "s1", "A", "hf:bob", "hf", cap=2, now=day)
    store.record_vote(shown(store), "s1", "B", "hf:ann", "hf", cap=2, now=day + timedelta(hours=2))
    assert len(store.voted_battles()) == 4


def test_daily_cap_comes_from_the_environment():
    assert daily_cap({"RLHFLAB_ARENA_DAILY_CAP": "5"}) == 5
    assert daily_cap({"RLHFLAB_ARENA_DAILY_CAP": "0"}) is None
    assert daily_cap({}) > 0
    with pytest.raises(UserError, match="RLHFLAB_ARENA_DAILY_CAP"):
        daily_cap({"RLHFLAB_ARENA_DAILY_CAP": "lots"})


def test_voter_identity_signed_in_session_and_refused():
    class Profile:
        username = "ann"

    assert voter_identity(Profile(), "abc", oauth_required=True) == ("hf:ann", "hf")
    assert voter_identity(None, "abc", oauth_required=False) == ("session:abc", "session")
    with pytest.raises(UserError, match="Sign in with Hugging Face"):
        voter_identity(None, "abc", oauth_required=True)
    with pytest.raises(UserError, match="session"):
        voter_identity(None, None, oauth_required=False)


def test_an_answer_that_names_a_model_drops_the_battle_and_is_counted(store):
    names = ["SmolLM", "PPO", "DPO", "GRPO", "SFT"]
    assert model_names_in("I am SmolLM2, made by Hugging Face", ["SmolLM2"]) == ["SmolLM2"]
    assert model_names_in("As a DPO model I think", names) == ["DPO"]
    assert model_names_in("dpop and grpowth and sfts", names) == []
    bid1 = shown(store, named_model=model_names_in("I'm a DPO policy.", names))
    bid2 = shown(store)
    for bid in (bid1, bid2):
        store.record_vote(bid, "s1", "A", "session:s1", "session")
    kept, dropped = leaderboard_battles(store.voted_battles())
    assert [r["battle_id"] for r in kept] == [bid2] and dropped == 1
    assert store.counts()["named_a_model"] == 1


def test_votes_and_battles_cannot_be_deleted_or_rewritten_even_with_raw_sql(store):
    bid = shown(store)
    store.record_vote(bid, "s1", "A", "session:s1", "session")
    con = sqlite3.connect(store.path)
    for sql in ("UPDATE votes SET vote = 'B'", "DELETE FROM votes", "DELETE FROM battles",
                "UPDATE battles SET answer_a = 'x'", "UPDATE battles SET policy_a = 'grpo'"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only|never changed"):
            con.execute(sql)
    con.close()
    pending = shown(store, complete=False)
    con = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):  # not even before completion
        con.execute("UPDATE battles SET prompt = 'x' WHERE battle_id = ?", (pending,))
    con.close()
    assert [r["vote"] for r in store.voted_battles()] == ["A"]


def test_concurrent_votes_race_for_one_battle_and_one_wins(store):
    bid = shown(store)
    results = []

    def vote(v):
        try:
            store.record_vote(bid, "s1", v, "session:s1", "session")
            results.append("ok")
        except UserError:
            results.append("refused")

    threads = [threading.Thread(target=vote, args=("AB"[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and len(store.voted_battles()) == 1


def test_preference_records_are_trl_conversational_and_leave_out_undecided(store):
    votes = ["A", "B", "tie", "both_bad"]
    for v in votes:
        store.record_vote(shown(store), "s1", v, "session:s1", "session")
    records, left_out = preference_records(store.voted_battles())
    assert left_out == {"tie": 1, "both_bad": 1, "named_a_model": 0}
    assert [r["chosen"][0]["content"] for r in records] == ["An apple.", "A pear, I think."]
    assert records[0]["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    assert records[1]["rejected"] == [{"role": "assistant", "content": "An apple."}]


def test_every_statement_is_a_fixed_module_constant_with_parameters():
    tree = ast.parse(open(votes_module.__file__, encoding="utf-8").read())
    constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("execute", "executemany", "executescript")]
    assert len(calls) >= 10
    for call in calls:
        sql = call.args[0]
        if isinstance(sql, ast.IfExp):  # BEGIN IMMEDIATE or BEGIN
            names = [sql.body, sql.orelse]
        else:
            names = [sql]
        for name in names:
            assert isinstance(name, ast.Name), f"line {call.lineno}: SQL must be a module constant"
            text = getattr(votes_module, name.id)
            assert isinstance(text, str), f"{name.id} is not text"
            if name.id in constants:  # a plain or implicitly joined literal, never an f-string or a .format
                assert not any(isinstance(n, (ast.JoinedStr, ast.Call, ast.BinOp))
                               for n in ast.walk(constants[name.id])), f"{name.id} is built, not fixed"
            if "?" in text:
                assert len(call.args) == 2 and text.count("?") == len(call.args[1].elts), \
                    f"line {call.lineno}: {name.id} needs one parameter per placeholder"


def test_the_rating_store_takes_one_rating_per_rater_and_item_when_asked(tmp_path):
    from rlhflab.store.ratings import CRITERIA, RatingsStore

    ratings = RatingsStore(tmp_path / "r.sqlite")
    ratings.replace_items([{"prompt_index": 0, "prompt": "p", "policy": pol, "response": pol} for pol in ("x", "y")])
    ids = [i["item_id"] for i in ratings.items()]
    scores = dict.fromkeys(CRITERIA, 3)
    ratings.add_ratings([(ids[0], scores)], "session:s1", once_per_rater=True)
    with pytest.raises(UserError, match="already rated"):
        ratings.add_ratings([(ids[1], scores), (ids[0], scores)], "session:s1", once_per_rater=True)
    assert len(ratings.ratings()) == 1, "the whole submission is refused"
    task = ratings.blind_task("session:s1", skip_rated=True)
    assert [r["item_id"] for r in task["responses"]] == [ids[1]], "only what this rater has not rated"
    ratings.add_ratings([(ids[1], scores)], "session:s1", once_per_rater=True)
    assert ratings.blind_task("session:s1", skip_rated=True) is None
    ratings.add_ratings([(ids[0], scores)], "session:s2", once_per_rater=True)  # another rater may
