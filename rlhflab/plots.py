"""Plotly figures shared by the evaluation report and the app (KL and reward curves, reward comparison)."""
from __future__ import annotations

from rlhflab.ppo_metrics import KL_BAND


def training_curves_figure(runs: dict[str, list[dict]], x: str = "step", per_sequence: bool = False):
    """KL (per token, or per sequence) , reward-model score and KL coefficient against PPO step for each run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kl_key, kl_label = (("kl_per_sequence", "KL (nats / sequence)") if per_sequence
                        else ("kl_per_token", "KL (nats / token)"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=(f"{kl_label} to the reference policy", "Reward-model score (mean per step)",
                                        "KL coefficient β"))
    colours = {"full": "#d62728", "lora": "#1f77b4"}
    for name, records in runs.items():
        if not records:
            continue
        xs = [r[x] for r in records]
        colour = colours.get(name.split("-")[-1], None)
        fig.add_trace(go.Scatter(x=xs, y=[r[kl_key] for r in records], mode="lines+markers", name=f"{name} KL",
                                 line=dict(color=colour)), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[r["score"] for r in records], mode="lines+markers", name=f"{name} score",
                                 line=dict(color=colour, dash="dot")), row=2, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[r["kl_coef"] for r in records], mode="lines", name=f"{name} β",
                                 line=dict(color=colour, dash="dash")), row=3, col=1)
    if not per_sequence:
        lo, hi = KL_BAND
        fig.add_hrect(y0=lo, y1=hi, fillcolor="green", opacity=0.12, line_width=0, row=1, col=1,
                      annotation_text=f"target band {lo}–{hi} nats/token", annotation_position="top left")
    fig.update_xaxes(title_text="PPO step" if x == "step" else "episode", row=3, col=1)
    fig.update_yaxes(title_text="nats / token" if not per_sequence else "nats / sequence", row=1, col=1)
    fig.update_yaxes(title_text="score", row=2, col=1)
    fig.update_yaxes(title_text="β", row=3, col=1)
    fig.update_layout(height=760, margin=dict(l=60, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.08))
    return fig


def reward_comparison_figure(results: dict):
    """Mean reward per policy with its 95 % bootstrap interval (from evaluate.py's results)."""
    import plotly.graph_objects as go

    pols = results.get("policies", {})
    names = list(pols)
    means = [pols[n]["reward_mean"][0] for n in names]
    err_hi = [pols[n]["reward_mean"][2] - pols[n]["reward_mean"][0] for n in names]
    err_lo = [pols[n]["reward_mean"][0] - pols[n]["reward_mean"][1] for n in names]
    fig = go.Figure(go.Bar(x=names, y=means, error_y=dict(type="data", array=err_hi, arrayminus=err_lo)))
    fig.update_layout(title="Mean reward-model score on held-out prompts (95 % bootstrap interval)",
                      yaxis_title="reward-model score", height=380, margin=dict(l=60, r=20, t=60, b=40))
    return fig


def reward_distribution_figure(chosen: list[float], rejected: list[float]):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Histogram(x=chosen, name="chosen", opacity=0.6))
    fig.add_trace(go.Histogram(x=rejected, name="rejected", opacity=0.6))
    fig.update_layout(barmode="overlay", title="Reward of chosen vs rejected responses (held-out pairs)",
                      xaxis_title="reward-model score", yaxis_title="pairs", height=360)
    return fig
