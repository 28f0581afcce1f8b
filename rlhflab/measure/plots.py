"""Plotly figures shared by the evaluation report and the app (KL and reward curves, over-optimisation, reward
comparison)."""
from __future__ import annotations

from rlhflab.measure.ppo_metrics import KL_BAND


def training_curves_figure(runs: dict[str, list[dict]], x: str = "step", per_sequence: bool = False):
    """KL (per token, or per sequence) , reward-model score and KL coefficient against PPO step for each run."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kl_key, kl_label = (("kl_per_sequence", "KL (nats / sequence)") if per_sequence
                        else ("kl_per_token", "KL (nats / token)"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=(f"{kl_label} to the reference policy", "Reward-model score (mean per step)",
                                        "KL coefficient β"))
    for name, records in runs.items():
        if not records:
            continue
        xs = [r[x] for r in records]
        colour = run_colour(name)
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
    fig.update_xaxes(title_text="training step" if x == "step" else "episode", row=3, col=1)
    fig.update_yaxes(title_text="nats / token" if not per_sequence else "nats / sequence", row=1, col=1)
    fig.update_yaxes(title_text="score", row=2, col=1)
    fig.update_yaxes(title_text="β", row=3, col=1)
    fig.update_layout(height=760, margin=dict(l=60, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.08))
    return fig


RUN_COLOURS = {"ppo-full": "#d62728", "full": "#d62728", "ppo-lora": "#1f77b4", "lora": "#1f77b4",
               "grpo": "#2ca02c", "grpo-lora": "#17becf", "rloo": "#9467bd", "rloo-lora": "#e377c2",
               "dpo": "#ff7f0e", "dpo-lora": "#bcbd22", "sft": "#8c564b", "sft-lora": "#7f7f7f"}


def run_colour(name: str) -> str | None:
    """One colour per run across every figure (PPO full red, LoRA blue, GRPO green, DPO orange, SFT brown)."""
    return RUN_COLOURS.get(name) or RUN_COLOURS.get(name.split("-")[-1])


def method_curves_figure(runs: dict[str, list[dict]]):
    """The offline methods' logs against their optimizer step: loss (SFT: nats/token on response tokens; DPO: its
    sigmoid loss), and for DPO the implicit reward margin (nats), the preference accuracy and the exact KL to the
    reference on the chosen responses (nats/token)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = (("loss", "loss (SFT: nats/token on responses; DPO: −log σ(β·margin))"),
            ("reward_margin", "DPO implicit reward margin, chosen − rejected (nats)"),
            ("preference_accuracy", "DPO preference accuracy (share of pairs with margin > 0)"),
            ("kl_per_token", "DPO KL to the reference on chosen responses (nats/token)"))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[title for _, title in rows])
    for name, records in runs.items():
        xs = [r["step"] for r in records]
        for i, (key, _) in enumerate(rows, start=1):
            ys = [r.get(key) for r in records]
            if all(y is None for y in ys):
                continue
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{name} {key.replace('_', ' ')}",
                                     line=dict(color=run_colour(name))), row=i, col=1)
    lo, hi = KL_BAND
    fig.add_hrect(y0=lo, y1=hi, fillcolor="green", opacity=0.12, line_width=0, row=len(rows), col=1)
    fig.update_xaxes(title_text="optimizer step", row=len(rows), col=1)
    fig.update_layout(height=880, margin=dict(l=60, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.06))
    return fig


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _errors(records: list[dict], mean_key: str, ci_key: str) -> dict | None:
    """Asymmetric error bars from [low, high] intervals (None when any record lacks one)."""
    hi, lo = [], []
    for r in records:
        ci = r.get(ci_key)
        if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(v) for v in ci)):
            return None
        hi.append(ci[1] - r[mean_key])
        lo.append(r[mean_key] - ci[0])
    return dict(type="data", array=hi, arrayminus=lo, thickness=1)


def overopt_usable(records: list[dict]) -> list[dict]:
    """The held-out checks that can be drawn (exact KL and training-RM score present), in step order."""
    good = [r for r in records if isinstance(r, dict) and _number(r.get("kl_exact_per_token"))
            and _number(r.get("rm_score_mean"))]
    return sorted(good, key=lambda r: r.get("step") if _number(r.get("step")) else 0)


def overoptimisation_figure(runs: dict[str, list[dict]]):
    """Over-optimisation: the training-RM score (solid) and the judge's score (dashed) on a fixed held-out prompt
    set against the exact KL per token to the reference, for each RL run (overopt.jsonl records), with 95 %
    intervals as error bars. Where the training RM keeps rising while the judge turns down, the policy is hacking
    the reward model. The two models' scores are each on their own scale: read the shapes, not the gap."""
    import plotly.graph_objects as go

    paired = all("rm_change_vs_step0" in r for records in runs.values() for r in overopt_usable(records)) and any(
        overopt_usable(records) for records in runs.values())
    if paired:
        return _overopt_change_figure(runs)
    fig = go.Figure()
    for name, records in runs.items():
        records = overopt_usable(records)
        if not records:
            continue
        colour = run_colour(name.split(" ")[0])
        xs = [r["kl_exact_per_token"] for r in records]
        steps = [r.get("step") for r in records]
        x_err = _errors(records, "kl_exact_per_token", "kl_exact_ci")
        fig.add_trace(go.Scatter(x=xs, y=[r["rm_score_mean"] for r in records], mode="lines+markers",
                                 name=f"{name} training RM", line=dict(color=colour),
                                 error_y=_errors(records, "rm_score_mean", "rm_score_ci"), error_x=x_err,
                                 customdata=steps, hovertemplate="step %{customdata}<br>KL %{x:.4f} nats/token"
                                                                 "<br>training RM %{y:.3f}<extra></extra>"))
        judged = [r for r in records if _number(r.get("judge_score_mean"))]
        if judged:
            fig.add_trace(go.Scatter(x=[r["kl_exact_per_token"] for r in judged],
                                     y=[r["judge_score_mean"] for r in judged], mode="lines+markers",
                                     name=f"{name} judge", line=dict(color=colour, dash="dash"),
                                     marker=dict(symbol="diamond"),
                                     error_y=_errors(judged, "judge_score_mean", "judge_score_ci"),
                                     customdata=[r.get("step") for r in judged],
                                     hovertemplate="step %{customdata}<br>KL %{x:.4f} nats/token"
                                                   "<br>judge %{y:.3f}<extra></extra>"))
    lo, hi = KL_BAND
    fig.add_vrect(x0=lo, x1=hi, fillcolor="green", opacity=0.10, line_width=0,
                  annotation_text=f"target band {lo}–{hi} nats/token", annotation_position="top left")
    fig.update_layout(title="Over-optimisation: held-out score against exact KL to the reference "
                            "(training RM solid, judge dashed; 95 % intervals)",
                      xaxis_title="exact KL to the reference (nats / token)",
                      yaxis_title="mean score on held-out prompts (logit; each model its own scale)",
                      height=480, margin=dict(l=60, r=20, t=60, b=40), legend=dict(orientation="h", y=-0.18))
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


def _triple(value):
    try:
        est, lo, hi = (float(x) for x in value)
    except (TypeError, ValueError):
        return None
    return None if est != est else (est, lo if lo == lo else est, hi if hi == hi else est)


def reward_kl_frontier_figure(results: dict):
    """The reward–KL frontier: each policy's gain over the base (under the judge and under the training reward
    model, each with its 95 % interval) against its exact KL to the base (nats/token, with its interval). Best-of-n
    rows have no measured KL, only the bound log n − (n−1)/n per sequence (per token: over the picks' mean length):
    drawn as a dashed segment from 0 to that bound, ending in an arrow-like marker, never as a point."""
    import plotly.graph_objects as go

    pols = {k: e for k, e in (results.get("policies") or {}).items() if isinstance(e, dict) and k != "base"}
    fig = go.Figure()
    fig.add_vrect(x0=KL_BAND[0], x1=KL_BAND[1], fillcolor="green", opacity=0.08, line_width=0,
                  annotation_text=f"KL band {KL_BAND[0]}–{KL_BAND[1]}", annotation_position="top left")
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers+text", text=["base"], textposition="bottom right",
                             marker=dict(color="grey", size=9, symbol="x"), name="base (0 gain, 0 KL)"))
    scorers = (("judge_gain_vs_base", "judge gain", "#d62728", "circle"),
               ("gain_vs_base", "training-RM gain", "#1f77b4", "diamond-open"))
    for key, label, colour, symbol in scorers:
        pts = []
        for name, e in pols.items():
            gain, kl = _triple(e.get(key)), _triple(e.get("kl_per_token_to_base"))
            if gain and kl:
                pts.append((name, kl, gain))
        if pts:
            fig.add_trace(go.Scatter(
                x=[p[1][0] for p in pts], y=[p[2][0] for p in pts], mode="markers+text", name=label,
                text=[p[0] for p in pts], textposition="top right", marker=dict(color=colour, size=10, symbol=symbol),
                error_x=dict(type="data", symmetric=False, array=[p[1][2] - p[1][0] for p in pts],
                             arrayminus=[p[1][0] - p[1][1] for p in pts], thickness=1),
                error_y=dict(type="data", symmetric=False, array=[p[2][2] - p[2][0] for p in pts],
                             arrayminus=[p[2][0] - p[2][1] for p in pts], thickness=1)))
        for name, e in pols.items():  # best-of-n: a bound on KL, not a measurement
            bound, gain = e.get("kl_bound_per_token"), _triple(e.get(key))
            if not isinstance(bound, (int, float)) or not gain:
                continue
            fig.add_trace(go.Scatter(
                x=[0, bound], y=[gain[0], gain[0]], mode="lines+markers+text", showlegend=False,
                text=["", f"{name}: KL ≤ {bound:.4f}"], textposition="top left", name=f"{name} {label} (KL bound)",
                line=dict(color=colour, dash="dash", width=1),
                marker=dict(color=colour, size=[0, 11], symbol=["circle", "triangle-right"]),
                error_y=dict(type="data", symmetric=False, array=[0, gain[2] - gain[0]],
                             arrayminus=[0, gain[0] - gain[1]], thickness=1)))
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"))
    judged = any(_triple(e.get("judge_gain_vs_base")) for e in pols.values())
    fig.update_layout(
        title=("Reward–KL frontier: gain over the base against exact KL to the base (95 % intervals both ways)"
               + ("" if judged else " — no judge: training-RM gains only")),
        xaxis_title="exact KL to the base (nats / token)",
        yaxis_title="gain over the base (score units; judge and RM each on their own scale)",
        height=520, margin=dict(l=70, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.18))
    return fig


def _overopt_change_figure(runs: dict[str, list[dict]]):
    """Over-optimisation as the change against the step-0 probe, paired by prompt (95 % bootstrap intervals), for
    the training RM (solid) and the judge (dashed), against exact KL; each point labelled with its minimal
    detectable effect (80 % power, alpha 0.05): a change smaller than it could not have been seen."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, records in runs.items():
        records = overopt_usable(records)
        if not records:
            continue
        colour = run_colour(name.split(" ")[0])
        for key, label, dash, symbol in (("rm", "training RM", None, "circle"), ("judge", "judge", "dash", "diamond")):
            pts = [r for r in records if r.get("step") == 0 or _triple(r.get(f"{key}_change_vs_step0"))]
            pts = [r for r in pts if r.get("step") != 0 or _number(r.get(f"{key}_score_mean"))]
            if len(pts) < 1:
                continue
            ys, up, down, text = [], [], [], []
            for r in pts:
                c = _triple(r.get(f"{key}_change_vs_step0")) if r.get("step") != 0 else (0.0, 0.0, 0.0)
                ys.append(c[0])
                up.append(c[2] - c[0])
                down.append(c[0] - c[1])
                mde = r.get(f"{key}_mde")
                text.append(f"MDE {mde:.2f}" if _number(mde) else "")
            fig.add_trace(go.Scatter(
                x=[r["kl_exact_per_token"] for r in pts], y=ys, mode="lines+markers+text", text=text,
                textposition="top center", textfont=dict(size=9, color=colour), name=f"{name} {label}",
                line=dict(color=colour, dash=dash), marker=dict(symbol=symbol),
                error_y=dict(type="data", symmetric=False, array=up, arrayminus=down),
                customdata=[r.get("step") for r in pts],
                hovertemplate="step %{customdata}<br>KL %{x:.4f} nats/token<br>change vs step 0 %{y:+.3f}"
                              "<br>%{text}<extra></extra>"))
    lo, hi = KL_BAND
    fig.add_vrect(x0=lo, x1=hi, fillcolor="green", opacity=0.10, line_width=0,
                  annotation_text=f"target band {lo}–{hi} nats/token", annotation_position="top left")
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"))
    fig.update_layout(title="Over-optimisation: held-out score change against step 0, paired by prompt, against "
                            "exact KL (training RM solid, judge dashed; 95 % intervals; MDE = minimal detectable "
                            "effect at 80 % power)",
                      xaxis_title="exact KL to the reference (nats / token)",
                      yaxis_title="score change vs step 0 (each model its own scale)",
                      height=500, margin=dict(l=60, r=20, t=70, b=40), legend=dict(orientation="h", y=-0.18))
    return fig
