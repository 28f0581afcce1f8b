"""Evaluation tab: eval/evaluate.py's results (mean reward with 95 % intervals, gains, win rates, KL) and report."""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from rlhflab.checkpoints import markdown_table
from rlhflab.errors import UserError
from rlhflab.plots import reward_comparison_figure
from rlhflab.stats import format_interval
from space.registry import Registry

EXAMPLE_COLUMNS = ["prompt", "base", "full", "lora"]
MAX_EXAMPLES = 20
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def _interval(value, signed: bool = True, percent: bool = False) -> str:
    """results.json's [estimate, low, high] in the report's format; '—' when it is missing or malformed."""
    try:
        est, lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return "—"
    if percent:
        return format_interval(est, lo, hi, 1, pct=True)
    return format_interval(est, lo, hi, 3, signed=signed)


def results_table(results: dict) -> str:
    """One row per policy: mean reward, gain and win rate vs base, KL per token to base, response length."""
    rows = []
    for name, p in (results.get("policies") or {}).items():
        if not isinstance(p, dict):
            continue
        rows.append([name, _interval(p.get("reward_mean")), _interval(p.get("gain_vs_base")),
                     _interval(p.get("win_rate_vs_base"), percent=True),
                     _interval(p.get("kl_per_token_to_base"), signed=False),
                     _interval(p.get("response_tokens_mean"), signed=False), p.get("n", "—")])
    if not rows:
        return "results.json lists no policies."
    header = ["policy", "mean reward [95 % CI]", "gain vs base", "win rate vs base", "KL to base (nats/token)",
              "response tokens", "n"]
    settings = results.get("settings")
    tail = f"\n\nGeneration settings: `{settings}`" if settings else ""
    command = results.get("command")
    tail += f"\n\nProduced by `{command}`." if command else ""
    return markdown_table(header, rows) + tail


def inline_local_images(report: str, folder: Path) -> str:
    """Point relative image links of report.md at files the app serves (the eval folder is an allowed path)."""
    def swap(match):
        alt, target = match.groups()
        if re.match(r"^[a-z]+:", target) or target.startswith("/"):
            return match.group(0)
        path = (folder / target).resolve()
        if path.is_file() and folder.resolve() in path.parents:
            return f"![{alt}](/gradio_api/file={path})"
        return match.group(0)

    return _IMAGE_LINK.sub(swap, report)


def examples_rows(results: dict) -> list[list[str]]:
    rows = []
    for ex in (results.get("examples") or [])[:MAX_EXAMPLES]:
        if isinstance(ex, dict):
            rows.append([str(ex.get(c, "")) for c in EXAMPLE_COLUMNS])
    return rows


def build_evaluation_tab(registry: Registry, demo: gr.Blocks) -> None:
    """The Evaluation tab (its notice is refreshed with the report)."""
    with gr.Tab("Evaluation", id="evaluation"):
        notice = gr.Markdown(elem_id="eval-notice")
        with gr.Row():
            refresh = gr.Button("Reload results", size="sm")
        plot = gr.Plot(label="Mean reward per policy", elem_id="eval-plot")
        table = gr.Markdown(elem_id="eval-table")
        with gr.Accordion("Report (report.md)", open=True):
            report = gr.Markdown(elem_id="eval-report")
        examples = gr.Dataframe(headers=EXAMPLE_COLUMNS, label="Held-out examples (same prompt, same seed)",
                                wrap=True, interactive=False, max_height=600)

    def evaluation():
        """The evaluation's reward comparison figure, results table, report and examples."""
        try:
            results, report_text, folder = registry.eval_results()
        except UserError as exc:
            return gr.skip(), "", "", [], f"⚠️ {exc}"
        try:
            fig = reward_comparison_figure(results)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            fig, exc_note = None, f"⚠️ results.json has no usable reward_mean per policy ({type(exc).__name__})."
        else:
            exc_note = ""
        report_md = inline_local_images(report_text, folder) if report_text else "*No report.md in the folder.*"
        return fig, results_table(results), report_md, examples_rows(results), exc_note

    gr.on([demo.load, refresh.click], evaluation, None, [plot, table, report, examples, notice],
          api_name="evaluation")
