"""Training-curves tab: KL to the reference (per token or per sequence), reward score and KL coefficient against
PPO step or episode, for both PPO runs, read from each checkpoint's metrics.jsonl."""
from __future__ import annotations

import gradio as gr

from rlhflab.checkpoints import METRICS_FILE, markdown_table
from rlhflab.errors import UserError
from rlhflab.plots import training_curves_figure
from rlhflab.ppo_metrics import KL_BAND, format_gain, summarize_metrics
from space.registry import KINDS, Registry

RUNS = (("full", "ppo-full"), ("lora", "ppo-lora"))  # checkpoint key -> trace name (its suffix picks the colour)
REQUIRED_KEYS = ("step", "episode", "kl_per_token", "kl_per_sequence", "score", "kl_coef")
X_CHOICES = [("PPO step", "step"), ("episode (prompts seen)", "episode")]
KL_CHOICES = [("nats per token", "token"), ("nats per sequence", "sequence")]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_runs(registry: Registry) -> tuple[dict[str, list[dict]], list[str]]:
    """{trace name: usable metric records} and notes on what is missing or malformed."""
    runs: dict[str, list[dict]] = {}
    notes: list[str] = []
    for key, name in RUNS:
        res = registry.resolve(key)
        if not res.available:
            notes.append(registry.missing_message(res))
            continue
        try:
            records = registry.ppo_metrics(key)
        except UserError as exc:
            notes.append(str(exc))
            continue
        good = [r for r in records if all(_is_number(r.get(k)) for k in REQUIRED_KEYS)]
        if not records:
            notes.append(f"The {KINDS[key].noun} ({res.detail}) has no {METRICS_FILE}; re-run "
                         f"`{KINDS[key].command}` to log its curves.")
        elif len(good) < len(records):
            notes.append(f"{len(records) - len(good)} of {len(records)} records in {name}/{METRICS_FILE} lack "
                         f"{', '.join(REQUIRED_KEYS)} and are not plotted.")
        if good:
            runs[name] = sorted(good, key=lambda r: r["step"])
    return runs, notes


def summary_markdown(runs: dict[str, list[dict]]) -> str:
    if not runs:
        return ""
    lo, hi = KL_BAND
    rows = []
    for name, records in runs.items():
        s = summarize_metrics(records)
        in_band = "yes" if lo <= s["kl_per_token_last"] <= hi else "no"
        rows.append([name, s["steps_logged"], f"{s['kl_per_token_first']:.4f} → {s['kl_per_token_last']:.4f}",
                     in_band, f"{s['score_first']:.3f} → {s['score_last']:.3f} ({s.get('window_label', '')})",
                     format_gain(s.get("paired_score_gain")), f"{s['kl_coef_final']:.4f}"])
    header = ["run", "steps logged", "KL nats/token, first → last window (mean)",
              f"last-window KL in {lo}–{hi}?", "score, first → last", "score gain, paired by prompt (95 % CI)",
              "final β"]
    return markdown_table(header, rows)


def build_curves_tab(registry: Registry, demo: gr.Blocks) -> None:
    """The Training curves tab (its notice is refreshed with the plot)."""
    with gr.Tab("Training curves", id="curves"):
        notice = gr.Markdown(elem_id="curves-notice")
        gr.Markdown("Logged once per PPO step. KL is measured against the frozen reference (the base model), "
                    f"in nats; the shaded band is the target {KL_BAND[0]}–{KL_BAND[1]} nats per token. "
                    "β is the KL coefficient the adaptive controller set for that step.")
        with gr.Row():
            x_axis = gr.Radio(X_CHOICES, value="step", label="x axis")
            kl_units = gr.Radio(KL_CHOICES, value="token", label="KL units")
            refresh = gr.Button("Reload logs", size="sm")
        plot = gr.Plot(label="PPO training curves", elem_id="curves-plot")
        summary = gr.Markdown(elem_id="curves-summary")

    def kl_curves(x_axis, kl_units):
        """KL (per token or per sequence), reward score and β against PPO step or episode for both PPO runs."""
        if x_axis not in ("step", "episode"):
            raise gr.Error(f"x_axis must be 'step' or 'episode', got {x_axis!r}.")
        if kl_units not in ("token", "sequence"):
            raise gr.Error(f"kl_units must be 'token' or 'sequence', got {kl_units!r}.")
        runs, notes = load_runs(registry)
        fig = training_curves_figure(runs, x=x_axis, per_sequence=kl_units == "sequence") if runs else None
        note = "\n\n".join(f"⚠️ {n}" for n in notes)
        return fig, summary_markdown(runs), note

    gr.on([demo.load, refresh.click, x_axis.change, kl_units.change], kl_curves, [x_axis, kl_units],
          [plot, summary, notice], api_name="kl_curves")
