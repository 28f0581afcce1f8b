"""Leaderboard tab: the people's Bradley–Terry ranking of the policies from the arena's votes (scores, 95 % intervals,
ranks, battle counts, a length-controlled variant), plotly heatmaps of the pairwise win fractions and battle counts,
and beside them each policy's gains under the training reward model and the judge and its exact KL from the latest
evaluation, with Kendall's τ between the people and each model judge. The same code writes the leaderboard into
the evaluation report (`python eval/evaluate.py --arena`). Before anyone has voted it says so and shows the model
judges' ranking alone: nothing here is ever built from votes nobody cast.
"""
from __future__ import annotations

import json
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.measure.leaderboard import build_leaderboard
from rlhflab.store.votes import preference_records
from space.registry import Registry

REFRESH_S = 30


def heatmap(board: dict, key: str, title: str, labels: dict[str, str], fmt: str):
    """A plotly heatmap of a pairwise matrix of the board (row policy against column policy)."""
    import plotly.graph_objects as go

    models = board.get("models") or []
    names = [labels.get(m, m) for m in models]
    z = board.get(key) or []
    text = [[("" if v is None else fmt.format(v)) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="RdBu"
                               if key == "win_fraction" else "Blues", zmin=0 if key == "win_fraction" else None,
                               zmax=1 if key == "win_fraction" else None, hoverongaps=False))
    fig.update_layout(title=title, xaxis_title="against (column)", yaxis_title="policy (row)", height=380,
                      margin=dict(l=40, r=20, t=50, b=40), yaxis=dict(autorange="reversed"))
    return fig


class LeaderboardCache:
    """The fitted board, refitted only when the number of votes or the evaluation results change (a fit with its
    bootstrap takes a few seconds on 2 cores; a timer and every visitor read it)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._lock = threading.Lock()
        self._key = None
        self._value = None

    def results(self) -> dict | None:
        try:
            results, _, _ = self.registry.eval_results()
            return results
        except UserError:
            return None

    def rows(self) -> list[dict]:
        if not self.registry.has_votes_store():
            return []
        return self.registry.votes_store().voted_battles()

    def get(self) -> tuple[dict, str, list[dict]]:
        rows = self.rows()
        results = self.results()
        labels = {k: e.label for k, e in self.registry.policy_entries().items()}
        key = (len(rows), json.dumps(results, sort_keys=True, default=str)[:100_000] if results else None,
               tuple(sorted(labels.items())))
        with self._lock:
            if key != self._key:
                board, text = build_leaderboard(rows, results, labels)
                self._key, self._value = key, (board, text, rows)
            return self._value


def build_leaderboard_tab(registry: Registry, demo: gr.Blocks) -> None:
    """The Leaderboard tab."""
    cache = LeaderboardCache(registry)
    export_dir = Path(tempfile.mkdtemp(prefix="rlhflab-votes-"))
    with gr.Tab("Leaderboard", id="leaderboard"):
        gr.Markdown("How people rank the policies, from the Arena tab's votes, beside how the reward model and the "
                    "judge rank them. Scores are Bradley–Terry on the Elo scale (a tie is half a win), with 95 % "
                    "bootstrap intervals; a policy's rank is 1 + the number of policies whose interval lies wholly "
                    "above its own.")
        table = gr.Markdown(elem_id="leaderboard-table")
        with gr.Row():
            wins = gr.Plot(label="Win fraction (row against column; ties half)", elem_id="leaderboard-wins")
            counts = gr.Plot(label="Battles between each two policies", elem_id="leaderboard-counts")
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm")
            export = gr.Button("Export votes as a preference dataset (TRL JSONL)", size="sm",
                               elem_id="leaderboard-export")
        export_note = gr.Markdown()
        export_file = gr.File(label="arena preferences (JSONL)", interactive=False)
        timer = gr.Timer(REFRESH_S)

    def leaderboard():
        """The leaderboard as markdown and its two heatmaps (empty plots before anyone has voted)."""
        try:
            board, text, _ = cache.get()
        except UserError as exc:
            return f"⚠️ {exc}", None, None
        if not board.get("battles"):
            return text, None, None
        labels = {k: e.label for k, e in registry.policy_entries().items()}
        return (text, heatmap(board, "win_fraction", "Win fraction", labels, "{:.2f}"),
                heatmap(board, "battle_counts", "Battle counts", labels, "{:d}"))

    def export_votes():
        """The decided battles as TRL's conversational preference format (prompt, chosen, rejected); ties and
        both-bad votes are left out and counted."""
        rows = cache.rows()
        records, left_out = preference_records(rows)
        if not records:
            raise gr.Error("There is no decided vote to export yet: vote A or B in the Arena tab first.")
        path = export_dir / f"arena-preferences-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        note = (f"Exported {len(records)} decided battles; left out {left_out['tie']} ties, {left_out['both_bad']} "
                f"both-bad and {left_out['named_a_model']} where an answer named a model. Train on it with "
                f"`python training/dpo.py --dataset FILE` or `python training/reward.py --dataset FILE`.")
        return str(path), note

    gr.on([demo.load, refresh.click, timer.tick], leaderboard, None, [table, wins, counts], api_name="leaderboard",
          show_progress="hidden")
    export.click(export_votes, None, [export_file, export_note], api_name="export_votes")
