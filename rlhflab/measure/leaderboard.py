"""The arena's leaderboard: Bradley–Terry scores on the Elo scale from people's votes, with bootstrap intervals,
ranks read off the intervals, pairwise matrices, a length-controlled variant, and the rank agreement between the
people and each model judge. The app's Leaderboard tab and `python eval/evaluate.py --arena` both call
`arena_leaderboard` and `leaderboard_markdown`.

The fit is scikit-learn's logistic regression, as FastChat's arena computes it: one row per battle outcome with
+1 for policy A's indicator and -1 for B's, no intercept; a tie is half a win for each side (two rows of weight ½).
Coefficients are natural-log odds; the Elo scale multiplies them by 400 / ln 10 and centres the scores at 1000.
A weak L2 prior (PRIOR_C) keeps a policy that won every one of few battles at a finite score; with hundreds of
votes it moves no score by a visible amount.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per natural-log unit of odds
ELO_CENTRE = 1000.0
PRIOR_C = 10.0  # inverse L2 strength of scikit-learn's LogisticRegression (weights summed over battles)
BOOTSTRAP_ROUNDS = 500
MIN_ROUNDS = 200
FEW_BATTLES = 20  # below this many battles a policy's bootstrap interval understates its uncertainty
OUTCOME = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}  # the Arena counts "both bad" as a tie


def _lr():
    from sklearn.linear_model import LogisticRegression

    # Newton steps: exact and ~3 ms for a handful of policies, where lbfgs took ~50 ms a fit here
    return LogisticRegression(C=PRIOR_C, l1_ratio=0.0, fit_intercept=False, solver="newton-cholesky", tol=1e-8,
                              max_iter=200)


def battle_arrays(rows: list[dict], models: list[str] | None = None):
    """(models, index of A, index of B, A's outcome 1/½/0, normalised length difference) of voted battles."""
    models = models or sorted({r["policy_a"] for r in rows} | {r["policy_b"] for r in rows})
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[r["policy_a"]] for r in rows], dtype=int)
    b = np.array([index[r["policy_b"]] for r in rows], dtype=int)
    s = np.array([OUTCOME[r["vote"]] for r in rows], dtype=float)
    la = np.array([float(_length(r, "a")) for r in rows])
    lb = np.array([float(_length(r, "b")) for r in rows])
    # FastChat's style feature: (len A - len B) / (len A + len B), then standardised over the battles
    length = np.divide(la - lb, la + lb, out=np.zeros_like(la), where=(la + lb) > 0)
    return models, a, b, s, length


def _length(row: dict, side: str) -> int:
    """An answer's length in tokens where the battle recorded them, else in words."""
    tokens = row.get(f"tokens_{side}")
    return int(tokens) if tokens else len(str(row.get(f"answer_{side}") or "").split())


def fit_bradley_terry(a, b, s, n_models: int, weights=None, style=None) -> tuple[np.ndarray, np.ndarray]:
    """(Elo scores centred at 1000, style coefficients in Elo points per standardised unit) by logistic regression."""
    weights = np.ones(len(a)) if weights is None else np.asarray(weights, float)
    if style is None:  # battles of one ordered pair differ only in outcome: fit on one row per pair (same result)
        pair = a * n_models + b
        keys, inverse = np.unique(pair, return_inverse=True)
        won = np.bincount(inverse, weights * s, len(keys))
        total = np.bincount(inverse, weights, len(keys))
        a, b = keys // n_models, keys % n_models
        s = np.divide(won, total, out=np.full(len(keys), 0.5), where=total > 0)
        weights = total
    x = np.zeros((len(a), n_models))
    rows = np.arange(len(a))
    x[rows, a] += 1.0
    x[rows, b] -= 1.0
    if style is not None:
        x = np.hstack([x, np.asarray(style, float).reshape(len(a), -1)])
    # a battle is a row with y = 1 weighted by A's outcome and a row with y = 0 weighted by B's
    xx = np.vstack([x, x])
    yy = np.concatenate([np.ones(len(a)), np.zeros(len(a))])
    ww = np.concatenate([weights * s, weights * (1.0 - s)])
    keep = ww > 0
    xx, yy, ww = xx[keep], yy[keep], ww[keep]
    if len(set(yy.tolist())) < 2:  # every outcome one way: give the fit its other class with zero weight
        xx, yy, ww = np.vstack([xx, xx[:1]]), np.append(yy, 1 - yy[0]), np.append(ww, 1e-12)
    model = _lr().fit(xx, yy, sample_weight=ww)
    coef = model.coef_[0]
    scores = coef[:n_models] - coef[:n_models].mean()
    return ELO_CENTRE + ELO_SCALE * scores, ELO_SCALE * coef[n_models:]


def ranks_from_intervals(lower: np.ndarray, upper: np.ndarray) -> list[int]:
    """The Arena's rank: 1 + the number of policies whose lower bound lies above this one's upper bound."""
    return [1 + int(np.sum(lower > upper[i])) for i in range(len(lower))]


def pairwise_matrices(models, a, b, s) -> tuple[list[list], list[list]]:
    """(row's win fraction against column, ties half; None where they never met), battle counts (symmetric)."""
    n = len(models)
    wins, counts = np.zeros((n, n)), np.zeros((n, n))
    for i, j, o in zip(a, b, s):
        wins[i, j] += o
        wins[j, i] += 1 - o
        counts[i, j] += 1
        counts[j, i] += 1
    frac = [[(wins[i, j] / counts[i, j]) if counts[i, j] else None for j in range(n)] for i in range(n)]
    return frac, counts.astype(int).tolist()


def _kendall(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(x) < 2:
        return None
    tau = kendalltau(x, y).statistic
    return None if tau != tau else float(tau)


def arena_leaderboard(rows: list[dict], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                      judge_scores: dict[str, dict[str, float]] | None = None, length_control: bool = True) -> dict:
    """The leaderboard of voted battles `rows` (VotesStore.voted_battles(), those that named a model left out).

    `judge_scores`: {judge name: {policy: mean score}} (a model judge's ranking); the board then holds Kendall's
    τ between the people's scores and each judge's over the policies both rank, with a bootstrap interval over
    the battles (the judge's ranking held fixed). Intervals are 2.5–97.5 % percentiles of `rounds` fits on
    battles resampled with replacement. `length_control=False` skips the length-controlled variant (tests).
    """
    rounds = max(int(rounds), MIN_ROUNDS)
    if not rows:
        return {"battles": 0, "models": [], "rounds": rounds}
    models, a, b, s, length = battle_arrays(rows)
    n = len(models)
    z = (length - length.mean()) / length.std() if length.std() > 0 else np.zeros_like(length)
    scores, _ = fit_bradley_terry(a, b, s, n)
    controlled, coef = fit_bradley_terry(a, b, s, n, style=z) if length_control else (scores, np.zeros(1))
    rng = np.random.default_rng(seed)
    boot, boot_c = np.empty((rounds, n)), np.empty((rounds, n))
    for k in range(rounds):
        w = rng.multinomial(len(a), np.full(len(a), 1.0 / len(a))).astype(float)
        boot[k], _ = fit_bradley_terry(a, b, s, n, weights=w)
        boot_c[k] = fit_bradley_terry(a, b, s, n, weights=w, style=z)[0] if length_control else boot[k]
    lo, hi = np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)
    lo_c, hi_c = np.percentile(boot_c, 2.5, axis=0), np.percentile(boot_c, 97.5, axis=0)
    frac, counts = pairwise_matrices(models, a, b, s)
    votes = np.bincount(np.concatenate([a, b]), minlength=n)
    cut = np.bincount(np.concatenate([a, b]), np.array([float(bool(r.get("cut_a"))) for r in rows]
                                                        + [float(bool(r.get("cut_b"))) for r in rows]), minlength=n)
    board = {
        "battles": int(len(a)), "rounds": rounds, "models": models,
        "outcomes": {k: int(sum(1 for r in rows if r["vote"] == k)) for k in OUTCOME},
        "score": scores.tolist(), "ci": np.stack([lo, hi], 1).tolist(), "rank": ranks_from_intervals(lo, hi),
        "votes": votes.astype(int).tolist(), "cut_rate": (cut / np.maximum(votes, 1)).tolist(), "win_fraction": frac, "battle_counts": counts,
        "length_controlled": {
            "score": controlled.tolist(), "ci": np.stack([lo_c, hi_c], 1).tolist(),
            "rank": ranks_from_intervals(lo_c, hi_c),
            "length_share": (scores - controlled).tolist(),  # Elo points of each score that length explains
            "length_coef_elo": float(coef[0]) if len(coef) else 0.0,
            "feature": "(len A − len B) / (len A + len B), standardised; lengths in tokens"},
    }
    if judge_scores:
        board["kendall_tau"] = {}
        for judge, by_policy in judge_scores.items():
            common = [m for m in models if by_policy.get(m) is not None]
            if len(common) < 2:
                continue
            idx = [models.index(m) for m in common]
            theirs = [by_policy[m] for m in common]
            taus = [t for k in range(rounds) if (t := _kendall(boot[k, idx].tolist(), theirs)) is not None]
            board["kendall_tau"][judge] = {
                "tau": _kendall(scores[idx].tolist(), theirs), "policies": common,
                "ci": [float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))] if taus else None}
    return board


def judge_scores_from_results(results: dict | None) -> dict[str, dict[str, float]]:
    """{"reward model": {policy: mean score}, "judge": {...}} from an evaluation's results.json."""
    out: dict[str, dict[str, float]] = {}
    for key, name in (("reward_mean", "training reward model"), ("judge_mean", "judge")):
        scores = {p: float(e[key][0]) for p, e in ((results or {}).get("policies") or {}).items()
                  if isinstance(e, dict) and isinstance(e.get(key), list) and e[key] and not p.startswith("best-of-")}
        if scores:
            out[name] = scores
    return out


def eval_columns(results: dict | None, policy: str) -> dict:
    """The latest evaluation's training-RM gain, judge gain and exact KL to the base of one policy (None if absent)."""
    entry = ((results or {}).get("policies") or {}).get(policy) or {}
    return {"rm_gain": entry.get("gain_vs_base"), "judge_gain": entry.get("judge_gain_vs_base"),
            "kl_per_token": entry.get("kl_per_token_to_base")}


def _ci_cell(v, digits: int = 2, signed: bool = True) -> str:
    if not isinstance(v, (list, tuple)) or len(v) < 3 or v[0] is None:
        return "n/a"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{fmt.format(v[0])} [{fmt.format(v[1])}, {fmt.format(v[2])}]"


def judges_only_markdown(results: dict | None, labels: dict[str, str] | None = None) -> str:
    """The model judges' ranking alone (what the leaderboard shows before anyone has voted)."""
    from rlhflab.store.cards import markdown_table

    labels = labels or {}
    judges = judge_scores_from_results(results)
    if not judges:
        return "No evaluation results yet either: `python eval/evaluate.py --profile demo` ranks the policies " \
               "by the reward model and the judge."
    first = judges.get("judge") or next(iter(judges.values()))  # the independent judge orders the table
    policies = sorted({p for s in judges.values() for p in s}, key=lambda p: -first.get(p, -math.inf))
    header = ["policy", *[f"{j} mean score" for j in judges], "training-RM gain", "judge gain", "exact KL (nats/token)"]
    rows = []
    for p in policies:
        cols = eval_columns(results, p)
        rows.append([labels.get(p, p), *[f"{judges[j][p]:+.3f}" if p in judges[j] else "n/a" for j in judges],
                     _ci_cell(cols["rm_gain"], 3), _ci_cell(cols["judge_gain"], 3),
                     _ci_cell(cols["kl_per_token"], 4, signed=False)])
    return markdown_table(header, rows)


def leaderboard_markdown(board: dict, results: dict | None = None, labels: dict[str, str] | None = None,
                         dropped: int = 0) -> str:
    """The leaderboard as markdown: the people's table, the length-controlled one, the judges beside them."""
    from rlhflab.store.cards import markdown_table

    labels = labels or {}
    if not board.get("battles"):
        text = ("**No one has voted yet.** The people's ranking appears here after the first vote in the Arena tab; "
                "until then, the model judges' ranking alone (from the latest evaluation):\n\n")
        if dropped:
            text = (f"**No battle counts yet** ({dropped} voted battle(s) dropped because an answer named a "
                    f"model). The model judges' ranking alone:\n\n")
        return text + judges_only_markdown(results, labels)
    models = board["models"]
    lc = board["length_controlled"]
    order = sorted(range(len(models)), key=lambda i: -board["score"][i])
    rows = []
    for i in order:
        m = models[i]
        cols = eval_columns(results, m)
        mark = "*" if board["votes"][i] < FEW_BATTLES else ""  # provisional: see the note under the table
        rows.append([f"{board['rank'][i]}{mark}", labels.get(m, m), f"{board['score'][i]:.0f}",
                     f"{board['ci'][i][0]:.0f}–{board['ci'][i][1]:.0f}", board["votes"][i],
                     f"{100 * board['cut_rate'][i]:.0f} %",
                     f"{lc['rank'][i]}{mark}", f"{lc['score'][i]:.0f} ({lc['ci'][i][0]:.0f}–{lc['ci'][i][1]:.0f})",
                     f"{lc['length_share'][i]:+.0f}",
                     _ci_cell(cols["rm_gain"], 3), _ci_cell(cols["judge_gain"], 3),
                     _ci_cell(cols["kl_per_token"], 4, signed=False)])
    header = ["rank", "policy", "score (Elo)", "95 % interval", "battles", "answers cut", "rank, length-controlled",
              "length-controlled score (95 %)", "of the score, length", "training-RM gain", "judge gain",
              "exact KL to base (nats/token)"]
    out = [markdown_table(header, rows)]
    o = board["outcomes"]
    out.append(f"{board['battles']} voted battle{'s' if board['battles'] != 1 else ''} ({o['A'] + o['B']} decided, {o['tie']} ties, {o['both_bad']} both "
               f"bad; ties and both-bad count half a win each)"
               + (f"; {dropped} more dropped because an answer named a model" if dropped else "")
               + f". Bradley–Terry by logistic regression, Elo scale centred at 1000; intervals from "
                 f"{board['rounds']} bootstrap resamples of the battles; rank = 1 + the number of policies whose "
                 f"interval lies wholly above. Length-controlled: the same fit with the length difference as a "
                 f"covariate (coefficient {lc['length_coef_elo']:+.0f} Elo per standard deviation); 'of the score, "
                 f"length' is the score minus its length-controlled value. Gains and KL are from the latest "
                 f"evaluation (`python eval/evaluate.py`), with their 95 % intervals.")
    few = [labels.get(m, m) for m, v in zip(models, board["votes"]) if v < FEW_BATTLES]
    if few:
        out.append(f"⚠️ {', '.join(few)}: fewer than {FEW_BATTLES} battles each (ranks marked *). A bootstrap of "
                   f"so few votes understates the uncertainty (three votes all one way resample to the same three "
                   f"votes): read those intervals as too narrow and those ranks as provisional.")
    taus = board.get("kendall_tau") or {}
    if taus:
        lines = [f"- people vs {judge}: Kendall τ = {t['tau']:+.2f}" if t["tau"] is not None else
                 f"- people vs {judge}: Kendall τ undefined (tied scores)" for judge, t in taus.items()]
        lines = [line + (f" (95 % interval {t['ci'][0]:+.2f} to {t['ci'][1]:+.2f}" if t.get("ci") else "")
                 + f"{', ' if t.get('ci') else ' ('}{len(t['policies'])} policies)"
                 for line, t in zip(lines, taus.values())]
        out.append("**Do the model judges rank the policies as people do?**\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def build_leaderboard(rows: list[dict], results: dict | None = None, labels: dict[str, str] | None = None,
                      rounds: int = BOOTSTRAP_ROUNDS) -> tuple[dict, str]:
    """(board, markdown) from VotesStore.voted_battles() rows and the latest evaluation results: the one function
    behind the app's Leaderboard tab and `python eval/evaluate.py --arena`. Battles where an answer named a model
    are left out and counted."""
    from rlhflab.store.votes import leaderboard_battles

    kept, dropped = leaderboard_battles(rows)
    board = arena_leaderboard(kept, rounds=rounds, judge_scores=judge_scores_from_results(results))
    board["dropped_named_a_model"] = dropped
    return board, leaderboard_markdown(board, results, labels, dropped)


ARENA_BEGIN, ARENA_END = "<!-- arena leaderboard -->", "<!-- /arena leaderboard -->"


def _voted_rows(votes_db: str | Path) -> list[dict]:
    from rlhflab.store.votes import VotesStore

    return VotesStore(votes_db).voted_battles() if Path(votes_db).is_file() else []


def write_arena_report(votes_db: str | Path, output_dir: str | Path, rounds: int = BOOTSTRAP_ROUNDS) -> str:
    """Write the leaderboard into <output_dir>/report.md (its own section, replaced on every run) and results.json
    (its "arena" key); return the section. What `python eval/evaluate.py --arena` runs."""
    import json

    from rlhflab.store.jsonio import write_json

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path, report_path = out / "results.json", out / "report.md"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    board, text = build_leaderboard(_voted_rows(votes_db), results or None, rounds=rounds)
    section = f"{ARENA_BEGIN}\n## Arena: how people rank the policies\n\n{text}\n{ARENA_END}"
    report = report_path.read_text(encoding="utf-8") if report_path.is_file() else ""
    if ARENA_BEGIN in report and ARENA_END in report:
        head, rest = report.split(ARENA_BEGIN, 1)
        report = head + section + rest.split(ARENA_END, 1)[1]
    else:
        report = (report.rstrip() + "\n\n" if report.strip() else "") + section + "\n"
    report_path.write_text(report, encoding="utf-8")
    results["arena"] = {**board, "votes_db": str(votes_db)}
    write_json(results_path, results)
    return section


def export_votes(votes_db: str | Path, path: str | Path) -> tuple[int, dict]:
    """Write the decided battles as a TRL conversational preference dataset (JSONL); (records written, left out)."""
    import json

    from rlhflab.errors import UserError
    from rlhflab.store.votes import preference_records

    records, left_out = preference_records(_voted_rows(votes_db))
    if not records:
        raise UserError(f"there is no decided vote in {votes_db} to export; vote A or B in the app's Arena tab first.")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records), left_out
