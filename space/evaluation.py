"""Evaluation tab: eval/evaluate.py's results (mean reward with 95 % intervals, gains under the training reward model
and the judge, length-controlled gains, win rates, KL) and report."""
from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.measure.evaluation import agreement_markdown, policy_results_table, scorers_markdown
from rlhflab.measure.plots import reward_comparison_figure
from rlhflab.store.cards import markdown_table
from space.registry import Registry

EXAMPLE_COLUMNS = ["prompt", "base", "full", "lora"]
MAX_EXAMPLES = 20
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def results_table(results: dict) -> str:
    """Which models scored, the policy results table (the report's own), the agreement between judge, reward model
    and raters, the generation settings and the command that produced them."""
    table = policy_results_table(results)
    if "judge" in results:  # results from before the judge have neither block
        table = scorers_markdown(results) + "\n\n" + table + "\n\n**Agreement**\n\n" + agreement_markdown(results)
    tail = ""
    generation = results.get("generation")
    if isinstance(generation, dict) and generation:  # the sampling settings only: no local paths
        tail += "\n\n**Generation settings** (identical for every policy)\n\n" + markdown_table(
            ["setting", "value"], [[k.replace("_", " "), v] for k, v in generation.items()])
    command = results.get("command")
    tail += f"\n\nProduced by `{command}`." if command else ""
    return table + tail


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


def example_columns(results: dict) -> list[str]:
    """prompt, then one column per evaluated policy (base, SFT, PPO, DPO, GRPO, best-of-n, ...)."""
    policies = [n for n in (results.get("policies") or {}) if isinstance(n, str)]
    return ["prompt", *policies] if policies else EXAMPLE_COLUMNS


def examples_rows(results: dict):
    """The held-out examples as a table with a column per policy."""
    import pandas as pd

    columns = example_columns(results)
    rows = [[str(ex.get(c, "")) for c in columns] for ex in (results.get("examples") or [])[:MAX_EXAMPLES]
            if isinstance(ex, dict)]
    return pd.DataFrame(rows, columns=columns)


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
