"""A driven attack on the arena through gradio_client and raw HTTP — many sessions, repeated votes, votes while the
answers stream, forged battle ids, votes without sign-in on a Space — leaves the votes and the leaderboard exactly as
they were; then a concurrent load of honest battles and votes loses none. The figures are written to
test-artifacts/arena_attack.json (or $RLHFLAB_ATTACK_REPORT); RELIABILITY.md quotes a run's."""
from __future__ import annotations

import json
import os
import platform
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from test_app import make_client, running_app, write_tiny_checkpoints

from rlhflab.measure.leaderboard import build_leaderboard

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
VOTE_APIS = ("/vote_a", "/vote_b", "/vote_tie", "/vote_both_bad")
ATTACK_SESSIONS = 12
HONEST_LOAD = 12


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, tiny_llama_dir) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("attack"), tiny_llama_dir, kinds=("full", "lora", "eval"))


def env_for(root: Path, tiny_llama_dir, **extra) -> dict:
    return {"RLHFLAB_CHECKPOINTS": str(root), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1",
            "RLHFLAB_ARENA_DAILY_CAP": "0", **extra}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def snapshot(registry) -> tuple:
    rows = registry.votes_store().voted_battles() if registry.has_votes_store() else []
    board, text = build_leaderboard(rows, rounds=200)
    return [(r["battle_id"], r["vote"], r["voter"]) for r in rows], board.get("score"), board.get("ci"), text


def refused(call) -> bool:
    try:
        call()
    except Exception:
        return True
    return False


def raw_vote(url: str, data: list) -> str:
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("gradio_api/call/vote_a", json={"data": data})
        if r.status_code != 200:
            return "event: error"
        return http.get(f"gradio_api/call/vote_a/{r.json()['event_id']}").text


def test_attack_changes_nothing_and_honest_load_loses_no_vote(store_root, tiny_llama_dir, tmp_path):
    figures: dict = {"host": f"{cpu_name()}, {os.cpu_count()} CPUs visible", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                                   time.gmtime()),
                     "models": "tiny Llama (2 layers, hidden 64) as base, full PPO and LoRA PPO"}
    attempts = refusals = 0
    with running_app(env_for(store_root, tiny_llama_dir)) as (registry, url):
        honest = [make_client(url) for _ in range(3)]
        for i, c in enumerate(honest):
            c.submit(f"Honest prompt {i}", api_name="/battle").result(timeout=120)
            c.predict(api_name="/vote_a")
        before = snapshot(registry)
        assert len(before[0]) == 3
        battle_ids = [b for b, _, _ in before[0]]

        # 1. the voters themselves vote again on their battles, every way
        for c in honest:
            for api in VOTE_APIS:
                attempts += 1
                refusals += refused(lambda: c.predict(api_name=api))
        # 2. many fresh sessions vote with no battle of their own
        for _ in range(ATTACK_SESSIONS):
            c = make_client(url)
            for api in VOTE_APIS:
                attempts += 1
                refusals += refused(lambda: c.predict(api_name=api))
        # 3. raw requests that carry a battle in their data: real ids of other sessions, unknown ids, garbage
        forged = [*battle_ids, uuid.uuid4().hex, "0" * 32, "../../etc/passwd", "'; DELETE FROM votes;--"]
        for bid in forged:
            for data in ([{"battle_id": bid, "complete": True}, None, None], [bid], []):
                attempts += 1
                refusals += "event: error" in raw_vote(url, data)
        # 4. a vote while the answers are still streaming
        c = make_client(url)
        job = c.submit("A battle voted on too early", api_name="/battle")
        attempts += 1
        refusals += refused(lambda: c.predict(api_name="/vote_a"))
        job.result(timeout=120)
        after = snapshot(registry)
        assert after == before, "the attack changed the votes or the leaderboard"
        assert refusals == attempts, f"{attempts - refusals} attack request(s) were not refused"
        figures["attack"] = {"sessions": ATTACK_SESSIONS + len(honest) + 1, "requests": attempts,
                             "refused": refusals, "votes_before": len(before[0]), "votes_after": len(after[0]),
                             "leaderboard_unchanged": after == before}

        # 5. honest load: sessions fight and vote at the same time; every vote must land
        latencies, errors = [], []

        def honest_voter(i: int):
            try:
                client = make_client(url)
                t0 = time.perf_counter()
                client.submit(f"Load prompt {i}", api_name="/battle").result(timeout=300)
                t1 = time.perf_counter()
                client.predict(api_name=VOTE_APIS[i % 4])
                latencies.append((t1 - t0, time.perf_counter() - t1))
            except Exception as exc:  # recorded, then asserted: a lost vote fails the test
                errors.append(repr(exc))

        start = time.perf_counter()
        threads = [threading.Thread(target=honest_voter, args=(i,)) for i in range(HONEST_LOAD)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rows = registry.votes_store().voted_battles()
        assert errors == [] and len(rows) == len(before[0]) + HONEST_LOAD, (errors, len(rows))
        assert [r["battle_id"] for r in rows[:3]] == battle_ids, "earlier votes untouched"
        battles = sorted(x[0] for x in latencies)
        votes = sorted(x[1] for x in latencies)
        figures["honest_load"] = {"concurrent_sessions": HONEST_LOAD, "votes_cast": HONEST_LOAD,
                                  "votes_stored": len(rows) - len(before[0]), "errors": len(errors),
                                  "wall_s": round(wall, 1), "battle_s_median": round(battles[len(battles) // 2], 2),
                                  "battle_s_max": round(battles[-1], 2),
                                  "vote_s_median": round(votes[len(votes) // 2], 3), "vote_s_max": round(votes[-1], 3)}

    # 6. on a Space: no sign-in, no vote (and no rating), whatever the session
    space_root = tmp_path / "space-store"
    shutil.copytree(store_root, space_root, ignore=shutil.ignore_patterns("arena"))
    space_attempts = space_refusals = 0
    with running_app(env_for(space_root, tiny_llama_dir, SPACE_ID="someone/lab")) as (registry, url):
        for i in range(4):
            c = make_client(url)
            c.submit(f"Space prompt {i}", api_name="/battle").result(timeout=120)
            for api in VOTE_APIS:
                space_attempts += 1
                space_refusals += refused(lambda: c.predict(api_name=api))
        assert registry.votes_store().voted_battles() == []
        assert space_refusals == space_attempts
    figures["oauth_mode"] = {"sessions": 4, "vote_requests": space_attempts, "refused": space_refusals,
                             "votes_stored": 0}
    out = Path(os.environ.get("RLHFLAB_ATTACK_REPORT") or ARTIFACTS / "arena_attack.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
