"""PPO metrics-log constants and summaries (no torch import, so the app and eval read logs cheaply)."""
from __future__ import annotations

KL_BAND = (0.02, 0.1)  # target KL to the reference, nats per token


def summarize_metrics(metrics: list[dict], k: int | None = None) -> dict:
    """Mean score and per-token KL over the first and last k steps (k = a quarter of the run, at least 1)."""
    if not metrics:
        return {}
    k = k or max(1, len(metrics) // 4)
    first, last = metrics[:k], metrics[-k:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    return {"steps_logged": len(metrics), "window_steps": k,
            "score_first": mean(first, "score"), "score_last": mean(last, "score"),
            "kl_per_token_first": mean(first, "kl_per_token"), "kl_per_token_last": mean(last, "kl_per_token"),
            "kl_per_token_final": metrics[-1]["kl_per_token"], "kl_coef_final": metrics[-1]["kl_coef"]}
