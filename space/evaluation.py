"""Evaluation tab: eval/evaluate.py's results, figure first — the reward–KL frontier (each policy's judge and
training-RM gain against its exact KL to the base, both with intervals; best-of-n at its KL bound) — then the tables
once (scorers, gains and costs, cut rates, judge independence, agreement, settings) and the examples. Checkpoints
are named by store name or Hub id, never by a local path."""
from __future__ import annotations

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.measure.evaluation import (agreement_markdown, cut_rate_sentence, independence_markdown,
                                        policy_results_table, scorers_markdown, strip_local_paths)
from rlhflab.measure.plots import reward_kl_frontier_figure
from rlhflab.store.cards import markdown_table
from space.registry import Registry

EXAMPLE_COLUMNS = ["prompt", "base", "full", "lora"]
MAX_EXAMPLES = 20


def results_table(results: dict) -> str:
    """Which models scored, the policy results table (the report's own), the agreement between judge, reward model
    and raters, the generation settings and the command that produced them."""
    table = policy_results_table(results) + "\n\n" + cut_rate_sentence(results)
    if "judge" in results:  # results from before the judge have neither block
        table = (scorers_markdown(results) + "\n\n" + table + "\n\n**Judge independence**\n\n"
                 + independence_markdown(results) + "\n\n**Agreement**\n\n" + agreement_markdown(results))
    tail = ""
    generation = results.get("generation")
    if isinstance(generation, dict) and generation:  # the sampling settings only: no local paths
        tail += "\n\n**Generation settings** (identical for every policy)\n\n" + markdown_table(
            ["setting", "value"], [[k.replace("_", " "), v] for k, v in generation.items()])
    command = results.get("command")
    tail += f"\n\nProduced by `{command}`." if command else ""
    return strip_local_paths(table + tail)


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
        plot = gr.Plot(label="Reward–KL frontier: gain over the base against exact KL to the base", elem_id="eval-plot")
        table = gr.Markdown(elem_id="eval-table")
        examples = gr.Dataframe(headers=EXAMPLE_COLUMNS, label="Held-out examples (same prompt, same seed)",
                                wrap=True, interactive=False, max_height=600)

    def evaluation():
        """The evaluation's reward–KL frontier, its tables (once) and the examples."""
        try:
            results, _report_text, _folder = registry.eval_results()
        except UserError as exc:
            return gr.skip(), "", [], f"⚠️ {strip_local_paths(str(exc))}"
        try:
            fig = reward_kl_frontier_figure(results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            fig, exc_note = None, f"⚠️ results.json has no usable gains and KLs per policy ({type(exc).__name__})."
        else:
            exc_note = ""
        return fig, results_table(results), examples_rows(results), exc_note

    gr.on([demo.load, refresh.click], evaluation, None, [plot, table, examples, notice], api_name="evaluation")
