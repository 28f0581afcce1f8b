"""The arena leaderboard's fit against a known answer. Every vote here is simulated from a known Bradley–Terry model
and lives only inside this test: nothing the app shows is built from it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rlhflab.measure.leaderboard import (
    ELO_CENTRE,
    arena_leaderboard,
    judge_scores_from_results,
    leaderboard_markdown,
    ranks_from_intervals,
)

TRUE_ELO = {"base": 1000.0 - 150, "sft": 1000.0 - 30, "dpo": 1000.0 + 40, "grpo": 1000.0 + 140}


def simulated_battles(n: int, seed: int, true=TRUE_ELO, tie_rate: float = 0.1, length_bias: float = 0.0,
                      lengths: dict | None = None) -> list[dict]:
    """Battles between random distinct policies, won as the Bradley–Terry model with `true` Elo scores says; a
    fraction `tie_rate` of battles are ties, and the others go A's way just often enough that A's expected score
    (a tie counting half) is the model's P(A beats B). With `length_bias`, the longer answer gets that many Elo extra;
    `lengths` gives a policy its own range of answer lengths (default 20-200 tokens)."""
    rng = np.random.default_rng(seed)
    names = list(true)
    rows = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        la, lb = (int(rng.integers(*(lengths or {}).get(p, (20, 200)))) for p in (a, b))
        diff = true[a] - true[b] + length_bias * np.sign(la - lb)
        p_a = 1 / (1 + 10 ** (-diff / 400))
        u = rng.random()
        if u < tie_rate:
            vote = "tie"
        else:
            vote = "A" if rng.random() < (p_a - tie_rate / 2) / (1 - tie_rate) else "B"
        rows.append({"policy_a": a, "policy_b": b, "vote": vote, "tokens_a": la, "tokens_b": lb})
    return rows


def centred(true: dict) -> dict:
    mean = sum(true.values()) / len(true)
    return {k: v - mean + ELO_CENTRE for k, v in true.items()}


def test_order_is_recovered_and_scores_are_on_the_elo_scale():
    board = arena_leaderboard(simulated_battles(3000, seed=1, tie_rate=0.0), rounds=200)
    fitted = dict(zip(board["models"], board["score"]))
    assert sorted(fitted, key=fitted.get) == sorted(TRUE_ELO, key=TRUE_ELO.get)
    for m, v in centred(TRUE_ELO).items():
        assert abs(fitted[m] - v) < 40, (m, fitted[m], v)
    assert abs(np.mean(board["score"]) - ELO_CENTRE) < 1e-6
    assert board["rank"][board["models"].index("grpo")] == 1 and board["rank"][board["models"].index("base")] == 4


def test_true_scores_fall_inside_the_intervals_in_at_least_90_percent_of_simulations():
    true = centred(TRUE_ELO)
    inside = total = 0
    for seed in range(20):
        board = arena_leaderboard(simulated_battles(400, seed=100 + seed), rounds=200, seed=seed,
                                  length_control=False)
        for m, (lo, hi) in zip(board["models"], board["ci"]):
            inside += lo <= true[m] <= hi
            total += 1
    assert inside / total >= 0.90, f"coverage {inside}/{total}"


def test_a_tie_is_half_a_win():
    rows = [{"policy_a": "x", "policy_b": "y", "vote": "tie", "tokens_a": 5, "tokens_b": 5}] * 10
    board = arena_leaderboard(rows, rounds=200)
    assert abs(board["score"][0] - board["score"][1]) < 1e-6
    rows = [{"policy_a": "x", "policy_b": "y", "vote": v, "tokens_a": 5, "tokens_b": 5} for v in ["A"] * 30 + ["tie"] * 20 + ["B"] * 10]
    board = arena_leaderboard(rows, rounds=200)
    # x wins 30 + 10 of 60: p = 2/3, Elo difference 400 log10(2) ≈ 120 (the weak prior shrinks it a little)
    diff = board["score"][0] - board["score"][1]
    assert 100 < diff <= 400 * math.log10(2) + 1
    assert board["win_fraction"][0][1] == pytest.approx(40 / 60) and board["battle_counts"][0][1] == 60


def test_one_sided_few_battles_stay_finite():
    rows = [{"policy_a": "x", "policy_b": "y", "vote": "A", "tokens_a": 5, "tokens_b": 5}] * 3
    board = arena_leaderboard(rows, rounds=200)
    assert all(math.isfinite(v) for v in board["score"]) and board["score"][0] > board["score"][1]
    # every resample of three "A" votes is the same three votes: the percentile bootstrap cannot widen it, so the
    # board says how few battles stand behind a score
    assert board["votes"] == [3, 3] and "fewer than" in leaderboard_markdown(board)


def test_ranks_from_intervals_follow_the_arena_rule():
    lower, upper = np.array([10.0, 5.0, -20.0]), np.array([20.0, 15.0, 0.0])
    assert ranks_from_intervals(lower, upper) == [1, 1, 3]


def test_length_control_takes_out_a_length_preference():
    true = {"short": 1000.0, "long": 1000.0}
    # equal policies, but "long" mostly writes the longer answer and people prefer the longer answer
    rows = simulated_battles(2000, seed=3, true=true, tie_rate=0.0, length_bias=150,
                             lengths={"short": (20, 120), "long": (80, 200)})
    board = arena_leaderboard(rows, rounds=200)
    raw = dict(zip(board["models"], board["score"]))
    lc = board["length_controlled"]
    ctrl = dict(zip(board["models"], lc["score"]))
    assert raw["long"] - raw["short"] > 100  # people preferred length, so the raw scores reward it
    assert lc["length_coef_elo"] > 0 and lc["length_share"][board["models"].index("long")] > 0
    assert abs(ctrl["long"] - ctrl["short"]) < abs(raw["long"] - raw["short"])


def test_kendall_tau_between_people_and_each_judge():
    rows = simulated_battles(1500, seed=4)
    results = {"policies": {p: {"reward_mean": [v, v - 1, v + 1], "judge_mean": [-v, -v - 1, -v + 1]}
                            for p, v in TRUE_ELO.items()}}
    judges = judge_scores_from_results(results)
    board = arena_leaderboard(rows, rounds=200, judge_scores=judges)
    taus = board["kendall_tau"]
    assert taus["training reward model"]["tau"] == pytest.approx(1.0)
    assert taus["judge"]["tau"] == pytest.approx(-1.0)
    lo, hi = taus["training reward model"]["ci"]
    assert lo <= 1.0 <= hi + 1e-9
    text = leaderboard_markdown(board, results)
    assert "Kendall τ = +1.00" in text and "Kendall τ = -1.00" in text and "length-controlled" in text


def test_no_votes_says_so_and_shows_the_judges_alone():
    results = {"policies": {"base": {"reward_mean": [0.1, 0, 0.2], "judge_mean": [0.3, 0.2, 0.4]},
                            "dpo": {"reward_mean": [0.5, 0.4, 0.6], "judge_mean": [0.2, 0.1, 0.3],
                                    "gain_vs_base": [0.4, 0.3, 0.5], "kl_per_token_to_base": [0.02, 0.01, 0.03]}}}
    text = leaderboard_markdown(arena_leaderboard([]), results)
    assert "No one has voted yet" in text and "judge mean score" in text and "+0.400" in text
    assert text.index("| base") < text.index("| dpo"), "ordered by the judge"
