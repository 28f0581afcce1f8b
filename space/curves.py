"""Training-curves tab: for every policy run that logged metrics — KL to the reference (per token or per
sequence), reward score and KL coefficient against step or episode for the RL runs (PPO, GRPO, RLOO); the
over-optimisation curve (training-RM and judge score on held-out prompts against exact KL, from overopt.jsonl);
loss, DPO's margin, accuracy and KL for the offline ones (SFT, DPO) — read from each checkpoint's metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.measure.evaluation import JUDGE_COMMAND
from rlhflab.measure.overopt import OVEROPT_FILE, read_overopt
from rlhflab.measure.plots import method_curves_figure, overopt_usable, overoptimisation_figure, training_curves_figure
from rlhflab.measure.ppo_metrics import KL_BAND, run_summary_table, summarize_metrics
from rlhflab.store.cards import markdown_table
from rlhflab.store.checkpoints import METRICS_FILE
from rlhflab.store.jsonio import read_jsonl
from rlhflab.store.rollouts import ROLLOUTS_FILE, read_rollouts
from space.registry import EXPECTED_POLICIES, Registry

TRACE_NAMES = {"full": "ppo-full", "lora": "ppo-lora"}  # policy key -> trace name where they differ
RL_METHODS = ("ppo", "grpo", "rloo")
REQUIRED_KEYS = ("step", "episode", "kl_per_token", "kl_per_sequence", "score", "kl_coef")
X_CHOICES = [("PPO step", "step"), ("episode (prompts seen)", "episode")]
KL_CHOICES = [("nats per token", "token"), ("nats per sequence", "sequence")]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_runs(registry: Registry, kind: str = "rl") -> tuple[dict[str, list[dict]], list[str]]:
    """{trace name: usable metric records} of every policy run of `kind` ("rl": PPO, GRPO, RLOO; "offline": SFT,
    DPO) and notes on what is missing or malformed."""
    runs: dict[str, list[dict]] = {}
    notes: list[str] = []
    entries = registry.policy_entries()
    required = REQUIRED_KEYS if kind == "rl" else ("step", "loss")
    for key in registry.missing_policies():
        method = "ppo" if key in ("full", "lora") else key.split("-")[0]
        if (method in RL_METHODS) != (kind == "rl"):
            continue
        live = [r for r in read_jsonl(live_log(registry, key)) if all(_is_number(r.get(k)) for k in required)]
        if live:  # still training: its work folder's log, drawn as it grows
            runs[f"{TRACE_NAMES.get(key, key)} (training…)"] = sorted(live, key=lambda r: r["step"])
        else:
            notes.append(registry.missing_message(registry.resolve(key)))
    for key, entry in entries.items():
        if key == "base" or (entry.method in RL_METHODS) != (kind == "rl"):
            continue
        name = TRACE_NAMES.get(key, key)
        try:
            records = registry.ppo_metrics(key)
        except UserError as exc:
            notes.append(str(exc))
            continue
        good = [r for r in records if all(_is_number(r.get(k)) for k in required)]
        if not records:
            command = EXPECTED_POLICIES.get(key, (None, registry.kind(key).command))[1]
            notes.append(f"The {entry.label} policy ({entry.source}) has no {METRICS_FILE}; re-run "
                         f"`{command}` to log its curves.")
        elif len(good) < len(records):
            notes.append(f"{len(records) - len(good)} of {len(records)} records in {name}/{METRICS_FILE} lack "
                         f"{', '.join(required)} and are not plotted.")
        if good:
            runs[name] = sorted(good, key=lambda r: r["step"])
    return runs, notes


def live_log(registry: Registry, key: str) -> Path:
    """Where a run that is still training writes its per-step log (the trainer's work folder beside the store)."""
    folder = EXPECTED_POLICIES.get(key, (key,))[0]
    return registry.checkpoints_dir / f".{folder}-work" / METRICS_FILE


def load_overopt(registry: Registry) -> tuple[dict[str, list[dict]], list[str]]:
    """{trace name: drawable held-out checks} of every RL run with an overopt.jsonl (a run still training: from
    its work folder), and notes on runs without checks or without judge scores."""
    runs: dict[str, list[dict]] = {}
    notes: list[str] = []
    for key in registry.missing_policies():
        method = "ppo" if key in ("full", "lora") else key.split("-")[0]
        if method in RL_METHODS and (live := overopt_usable(read_overopt(live_log(registry, key).parent))):
            runs[f"{TRACE_NAMES.get(key, key)} (training…)"] = live
    for key, entry in registry.policy_entries().items():
        if key == "base" or entry.method not in RL_METHODS:
            continue
        name = TRACE_NAMES.get(key, key)
        try:
            path = registry.checkpoint_file(key, OVEROPT_FILE)
        except UserError as exc:
            notes.append(str(exc))
            continue
        records = overopt_usable(read_overopt(path.parent)) if path else []
        if records:
            runs[name] = records
        else:
            command = EXPECTED_POLICIES.get(key, (None, registry.kind(key).command))[1]
            notes.append(f"The {entry.label} run has no held-out checks ({OVEROPT_FILE}); re-run `{command}` to "
                         f"draw its over-optimisation curve.")
    for name, records in runs.items():
        if not any(isinstance(r.get("judge_score_mean"), (int, float)) for r in records):
            notes.append(f"{name} has no judge scores (no judge when it trained): only its training-RM curve is "
                         f"drawn; train a judge with `{JUDGE_COMMAND}` before the next run.")
    return runs, notes


ROLLOUT_COLUMNS = ["#", "prompt", "response", "score (training RM)", "exact KL (nats/sequence)", "tokens", "cut"]
SORT_CHOICES = [("score, highest first", "score"), ("score, lowest first", "score-asc"),
                ("exact KL, highest first", "kl_exact"), ("length, longest first", "tokens"), ("as sampled", "index")]
LIVE_SUFFIX = " (training…)"


def rollout_runs(registry: Registry) -> dict[str, Path]:
    """{run name: folder holding its rollouts.jsonl} of every RL run: finished checkpoints, and runs still training
    (their work folder, named '… (training…)')."""
    runs: dict[str, Path] = {}
    for key in registry.missing_policies():
        method = "ppo" if key in ("full", "lora") else key.split("-")[0]
        folder = live_log(registry, key).parent
        if method in RL_METHODS and (folder / ROLLOUTS_FILE).is_file():
            runs[f"{TRACE_NAMES.get(key, key)}{LIVE_SUFFIX}"] = folder
    for key, entry in registry.policy_entries().items():
        if key == "base" or entry.method not in RL_METHODS:
            continue
        try:
            path = registry.checkpoint_file(key, ROLLOUTS_FILE)
        except UserError:
            continue
        if path is not None:
            runs[TRACE_NAMES.get(key, key)] = path.parent
    return runs


def _cell(value, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def rollout_table(rows: list[dict], sort: str = "score"):
    """One step's rollouts as a table (pandas), sorted as asked; missing values ('—') last."""
    import pandas as pd

    key, descending = {"score-asc": ("score", False)}.get(sort, (sort, sort != "index"))
    if key not in ("score", "kl_exact", "tokens", "index"):
        raise gr.Error(f"sort must be one of {', '.join(v for _, v in SORT_CHOICES)}, got {sort!r}.")
    present = [r for r in rows if _is_number(r.get(key))]
    absent = [r for r in rows if not _is_number(r.get(key))]
    ordered = sorted(present, key=lambda r: r[key], reverse=descending) + absent
    data = [[r.get("index", i), r.get("prompt") or "—", r.get("response") if r.get("response") is not None else "—",
             _cell(r.get("score"), "{:.3f}"), _cell(r.get("kl_exact"), "{:.4f}"), _cell(r.get("tokens"), "{:d}"),
             {True: "cut", False: "ended"}.get(r.get("cut"), "—")] for i, r in enumerate(ordered)]
    return pd.DataFrame(data, columns=ROLLOUT_COLUMNS)


def any_live(registry: Registry) -> bool:
    return any(live_log(registry, key).is_file() for key in registry.missing_policies())


def offline_summary_markdown(runs: dict[str, list[dict]]) -> str:
    """First and last logged values of the offline runs (SFT loss; DPO loss, margin, accuracy, KL)."""
    if not runs:
        return ""

    def first_last(records, key, fmt):
        values = [r[key] for r in records if _is_number(r.get(key))]
        return f"{fmt.format(values[0])} → {fmt.format(values[-1])}" if values else "—"

    rows = [[name, len(records), first_last(records, "loss", "{:.3f}"), first_last(records, "reward_margin", "{:+.3f}"),
             first_last(records, "preference_accuracy", "{:.2f}"), first_last(records, "kl_per_token", "{:.4f}")]
            for name, records in runs.items()]
    return markdown_table(["run", "steps logged", "loss, first → last step", "DPO margin (nats)",
                           "DPO preference accuracy", "DPO KL on chosen (nats/token)"], rows)


def summary_markdown(runs: dict[str, list[dict]]) -> str:
    if not runs:
        return ""
    return run_summary_table({name: summarize_metrics(records) for name, records in runs.items()})


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
        plot = gr.Plot(label="RL training curves (PPO, GRPO)", elem_id="curves-plot")
        summary = gr.Markdown(elem_id="curves-summary")
        gr.Markdown("**Over-optimisation** — every few steps each RL run scores a fixed held-out prompt set with "
                    "the training reward model and the independent judge and measures the exact KL per token "
                    "(Σ p log p/q over the vocabulary). Training RM solid, judge dashed, 95 % intervals as error "
                    "bars; each model's score is on its own scale. Runs logged since issue 25 plot the change against "
                    "the step-0 probe, paired by prompt, each point labelled with its minimal detectable effect (MDE, "
                    "80 % power): a smaller change could not have been seen. A training-RM curve that keeps rising "
                    "while the judge's turns down is reward hacking.")
        overopt_notice = gr.Markdown(elem_id="curves-overopt-notice")
        overopt_plot = gr.Plot(label="Over-optimisation: held-out score against exact KL",
                               elem_id="curves-overopt-plot")
        gr.Markdown("**SFT and DPO** — logged once per optimizer step; single-batch values, so expect noise.")
        offline_notice = gr.Markdown(elem_id="curves-offline-notice")
        offline_plot = gr.Plot(label="SFT and DPO training curves", elem_id="curves-offline-plot")
        offline_summary = gr.Markdown(elem_id="curves-offline-summary")
        gr.Markdown("**Rollouts** — every step's sampled answers, as the run trained on them (`rollouts.jsonl`): "
                    "the prompt, the response, the training reward model's score, the exact KL to the reference "
                    "summed over the response (nats per sequence) and whether it was cut at the token budget. Runs "
                    "still training show too, their latest step included.")
        with gr.Row():
            rollout_run = gr.Dropdown(choices=[], label="run", elem_id="rollouts-run", allow_custom_value=False)
            rollout_sort = gr.Radio(SORT_CHOICES, value="score", label="sort by", elem_id="rollouts-sort")
        rollout_step = gr.Slider(1, 2, value=1, step=1, label="step", elem_id="rollouts-step")
        rollout_notice = gr.Markdown(elem_id="rollouts-notice")
        rollout_view = gr.Dataframe(headers=ROLLOUT_COLUMNS, label="Rollouts of the step", wrap=True,
                                    interactive=False, max_height=600, elem_id="rollouts-table")
        # While a run is still training (make demo serves the app before the pipeline ends), redraw every 15 s.
        # (Inside the tab: a Timer placed directly in gr.Tabs shifts the tab buttons' labels.)
        timer = gr.Timer(15)

    def kl_curves(x_axis, kl_units):
        """KL (per token or per sequence), reward score and β against step or episode for every RL run (PPO, GRPO)."""
        if x_axis not in ("step", "episode"):
            raise gr.Error(f"x_axis must be 'step' or 'episode', got {x_axis!r}.")
        if kl_units not in ("token", "sequence"):
            raise gr.Error(f"kl_units must be 'token' or 'sequence', got {kl_units!r}.")
        runs, notes = load_runs(registry)
        fig = training_curves_figure(runs, x=x_axis, per_sequence=kl_units == "sequence") if runs else None
        note = "\n\n".join(f"⚠️ {n}" for n in notes)
        return fig, summary_markdown(runs), note

    def overopt_curves():
        """Training-RM and judge score on held-out prompts against exact KL per token for every RL run."""
        runs, notes = load_overopt(registry)
        fig = overoptimisation_figure(runs) if runs else None
        return fig, "\n\n".join(f"⚠️ {n}" for n in notes)

    def method_curves():
        """Loss, and for DPO margin, preference accuracy and KL, against step for every SFT and DPO run."""
        runs, notes = load_runs(registry, "offline")
        fig = method_curves_figure(runs) if runs else None
        return fig, offline_summary_markdown(runs), "\n\n".join(f"⚠️ {n}" for n in notes)

    def rollout_choices(current):
        """The runs with rollouts (the current one kept if it still has them) and the step slider for it."""
        runs = rollout_runs(registry)
        if not runs:
            return (gr.update(choices=[], value=None), gr.update(minimum=1, maximum=2, value=1),
                    "No rollouts logged yet: PPO, GRPO and RLOO write every step's rollouts to "
                    f"`{ROLLOUTS_FILE}` as they train.")
        name = current if current in runs else next(iter(runs))
        steps = sorted({r["step"] for r in read_rollouts(runs[name])})
        return (gr.update(choices=list(runs), value=name),
                gr.update(minimum=steps[0], maximum=max(steps[-1], steps[0] + 1), value=steps[-1], step=1), "")

    def rollout_view_of(run, step, sort):
        """The rollouts of one run's step, sorted by score, KL or length (a step with none: the nearest logged)."""
        runs = rollout_runs(registry)
        if not run or run not in runs:
            return rollout_table([]), "Pick a run."
        rows = read_rollouts(runs[run])
        steps = sorted({r["step"] for r in rows})
        if not steps:
            return rollout_table([]), f"{run} has no rollouts yet."
        want = int(step or steps[-1])
        shown = min(steps, key=lambda s: (abs(s - want), -s))
        note = f"Step {shown} of {steps[-1]} logged" + (f" (no rollouts at step {want})" if shown != want else "")
        step_rows = [r for r in rows if r["step"] == shown]
        cut = [r["cut"] for r in step_rows if isinstance(r.get("cut"), bool)]
        if cut:
            note += f"; {len(step_rows)} rollouts, {sum(cut)} cut at the token budget"
        return rollout_table(step_rows, sort), note + "."

    def on_run(run, sort):
        choices, slider, note = rollout_choices(run)
        table, view_note = rollout_view_of(run, None, sort)
        return slider, table, note or view_note

    gr.on([demo.load, refresh.click], rollout_choices, [rollout_run], [rollout_run, rollout_step, rollout_notice],
          api_name="rollout_runs").then(rollout_view_of, [rollout_run, rollout_step, rollout_sort],
                                        [rollout_view, rollout_notice], api_name=False)
    rollout_run.input(on_run, [rollout_run, rollout_sort], [rollout_step, rollout_view, rollout_notice],
                      api_name=False)
    gr.on([rollout_step.release, rollout_step.input, rollout_sort.change], rollout_view_of,
          [rollout_run, rollout_step, rollout_sort], [rollout_view, rollout_notice], api_name="rollouts")

    gr.on([demo.load, refresh.click, x_axis.change, kl_units.change], kl_curves, [x_axis, kl_units],
          [plot, summary, notice], api_name="kl_curves")
    gr.on([demo.load, refresh.click], method_curves, None, [offline_plot, offline_summary, offline_notice],
          api_name="method_curves")
    gr.on([demo.load, refresh.click], overopt_curves, None, [overopt_plot, overopt_notice], api_name="overopt_curves")

    def follow(x_axis, kl_units):
        if not any_live(registry):
            return (gr.skip(),) * 8
        return (*kl_curves(x_axis, kl_units), *method_curves(), *overopt_curves())

    def follow_rollouts(run, step, sort):
        """A run still training: its new steps join the slider (followed when the last one was shown)."""
        runs = rollout_runs(registry)
        if not any_live(registry) or not run or not run.endswith(LIVE_SUFFIX) or run not in runs:
            return (gr.skip(),) * 3
        steps = sorted({r["step"] for r in read_rollouts(runs[run])})
        if not steps:
            return (gr.skip(),) * 3
        at_end = step is None or int(step) >= steps[-1] - 1
        value = steps[-1] if at_end else int(step)
        table, note = rollout_view_of(run, value, sort)
        return gr.update(maximum=max(steps[-1], steps[0] + 1), value=value), table, note

    timer.tick(follow_rollouts, [rollout_run, rollout_step, rollout_sort], [rollout_step, rollout_view, rollout_notice],
               api_name=False, queue=False)
    timer.tick(follow, [x_axis, kl_units], [plot, summary, notice, offline_plot, offline_summary, offline_notice,
                                             overopt_plot, overopt_notice], api_name=False, queue=False)
