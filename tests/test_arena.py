"""The Arena and Leaderboard tabs driven through gradio_client on tiny checkpoints: a battle streams two anonymous
answers, a vote reveals the names and scores and moves the leaderboard, the identity rules hold through the app."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from rlhflab.config import DEMO_ANSWER_TOKENS
from test_app import FakeScheduler, make_client, running_app, text_of, write_reward, write_tiny_checkpoints

LABELS = ("Base model", "Full PPO", "LoRA PPO")


@pytest.fixture(scope="module")
def arena_store(tmp_path_factory, tiny_llama_dir) -> Path:
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("arena-checkpoints"), tiny_llama_dir,
                                  kinds=("reward", "full", "lora", "eval"))
    write_reward(root / "judge", tiny_llama_dir)
    return root


def app_env(store: Path, tiny_llama_dir, **extra) -> dict:
    return {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1",
            "RLHFLAB_VOTES_REPO": "someone/votes", "HF_TOKEN": "hf_test", **extra}


@pytest.fixture(scope="module")
def arena_app(arena_store, tiny_llama_dir):
    with running_app(app_env(arena_store, tiny_llama_dir), rating_scheduler_cls=FakeScheduler) as app:
        yield app


def fight(client, prompt="Name a fruit."):
    job = client.submit(prompt, api_name="/battle")
    out = job.result(timeout=120)
    return out, job.outputs()


def shown_text(outputs) -> str:
    return json.dumps(outputs, default=str)


def test_every_arena_endpoint_is_named(arena_app):
    _, url = arena_app
    names = set(make_client(url).view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("/battle", "/draw_prompt", "/vote_a", "/vote_b", "/vote_tie", "/vote_both_bad", "/leaderboard",
                 "/export_votes"):
        assert name in names, f"{name} missing from {sorted(names)}"


def test_before_any_vote_the_leaderboard_says_so_and_shows_the_judges(arena_app):
    registry, url = arena_app
    if registry.has_votes_store() and registry.votes_store().voted_battles():
        pytest.skip("a vote was already cast in this module")
    text, wins, counts = make_client(url).predict(api_name="/leaderboard")
    assert "No one has voted yet" in text and "judge" in text and wins is None


def test_battle_streams_two_anonymous_answers_then_the_vote_reveals_names(arena_app):
    registry, url = arena_app
    c = make_client(url)
    out, updates = fight(c)
    chat_a, chat_b, *_, status = out
    assert text_of(chat_a[0]) == "Name a fruit." and text_of(chat_b[0]) == "Name a fruit."
    assert "which one is better" in status
    assert len(updates) > 2, "the answers stream in several updates"
    assert not any(label in shown_text(updates) for label in LABELS), "no name before the vote"
    before = len(registry.votes_store().voted_battles())
    reveal, *_ = c.predict(api_name="/vote_a")
    assert "Your vote: A is better" in reveal and sum(label in reveal for label in LABELS) == 2
    assert "reward-model score" in reveal and "judge score" in reveal and "n/a (no judge)" not in reveal
    rows = registry.votes_store().voted_battles()
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["vote"] == "A" and row["voter_kind"] == "session" and row["voter"].startswith("session:")
    assert row["settings"]["max_new_tokens"] == DEMO_ANSWER_TOKENS and row["revision_a"] and row["prompt_source"] == "typed"
    text, wins, counts = c.predict(api_name="/leaderboard")
    assert "score (Elo)" in text and wins is not None and counts is not None
    # the record was handed to the Hub sync as well
    synced = list((registry.votes_path().parent / "votes-hub").glob("votes-*.jsonl"))
    assert any(json.loads(line)["battle_id"] == row["battle_id"] for f in synced for line in f.read_text().splitlines())


def test_a_second_vote_on_the_same_battle_is_refused(arena_app):
    registry, url = arena_app
    c = make_client(url)
    fight(c)
    c.predict(api_name="/vote_tie")
    n = len(registry.votes_store().voted_battles())
    for api in ("/vote_a", "/vote_b", "/vote_both_bad"):
        with pytest.raises(Exception, match="already has its vote"):
            c.predict(api_name=api)
    assert len(registry.votes_store().voted_battles()) == n


def test_voting_without_a_battle_is_refused(arena_app):
    _, url = arena_app
    with pytest.raises(Exception, match="Start a battle first"):
        make_client(url).predict(api_name="/vote_b")


def test_a_drawn_prompt_is_a_held_out_prompt_and_recorded_as_such(arena_app):
    registry, url = arena_app
    c = make_client(url)
    text = c.predict(api_name="/draw_prompt")
    assert text in registry.heldout_prompts()


def test_export_writes_trl_preferences(arena_app, tmp_path):
    registry, url = arena_app
    c = make_client(url)
    fight(c)
    c.predict(api_name="/vote_b")
    path, note = c.predict(api_name="/export_votes")
    lines = Path(path["path"] if isinstance(path, dict) else path).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and set(records[0]) >= {"prompt", "chosen", "rejected"}
    assert records[0]["prompt"][0]["role"] == "user" and records[0]["chosen"][0]["role"] == "assistant"
    assert "ties" in note


def test_on_a_space_a_vote_without_sign_in_is_refused(arena_store, tiny_llama_dir, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(arena_store, store, ignore=shutil.ignore_patterns("arena"))
    with running_app(app_env(store, tiny_llama_dir, SPACE_ID="someone/lab")) as (registry, url):
        c = make_client(url)
        fight(c)
        with pytest.raises(Exception, match="Sign in with Hugging Face"):
            c.predict(api_name="/vote_a")
        assert registry.votes_store().voted_battles() == []
        # the 1-5 rating form asks the same identity: no task and no rating without a sign-in
        task = c.predict(api_name="/next_item")
        assert "Sign in with Hugging Face" in task[-1]
        before = len(registry.ratings_store().ratings())
        with pytest.raises(Exception, match="Sign in with Hugging Face"):
            c.predict(*([4] * 5 + [None] * 10), api_name="/rate")
        assert len(registry.ratings_store().ratings()) == before


def test_a_forged_battle_in_a_raw_request_changes_nothing(arena_app):
    registry, url = arena_app
    before = len(registry.votes_store().voted_battles())
    real = registry.votes_store().voted_battles()[0]["battle_id"] if before else "0" * 32
    for state in ({"battle_id": real, "complete": True}, {"battle_id": "0" * 32, "complete": True}, "x"):
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("gradio_api/call/vote_a", json={"data": [state, None, None]})
            stream = http.get(f"gradio_api/call/vote_a/{r.json()['event_id']}").text
        assert "event: error" in stream and "Your vote" not in stream
    assert len(registry.votes_store().voted_battles()) == before
