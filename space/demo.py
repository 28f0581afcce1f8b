"""build_demo(registry): the whole app as one gr.Blocks, one builder function per tab, with its queue configured."""
from __future__ import annotations

import gradio as gr

from space.about import build_about_tab
from space.arena import build_arena_tab
from space.chat import build_chat_tab, chat_notice, refresh_pickers
from space.curves import build_curves_tab
from space.evaluation import build_evaluation_tab
from space.leaderboard import build_leaderboard_tab
from space.rating import build_rating_tab
from space.registry import Registry
from space.reward import build_reward_tab
from space.status import pipeline_status_markdown
from space.xrays import build_xrays_tab

TITLE = "RLHF + GAN checkpoint lab"
DEFAULT_CONCURRENCY = 4  # light events (files, SQLite, plots); model events set their own limits
CSS = """
#pipeline-status { color: #1d4ed8; }
#chat-notice, #reward-notice, #curves-notice, #eval-notice, #rating-notice, #xrays-notice, #arena-status { color: #b45309; }
footer { display: none !important; }
/* Gradio's hover rule outranks its checked rule, so a chosen radio under the pointer looked unchosen. */
input[type=radio]:checked:hover { background-color: var(--checkbox-background-color-selected) !important;
  border-color: var(--checkbox-border-color-selected) !important; }
.rating-radio .wrap { gap: 2px !important; }
.rating-radio label { padding: 2px 5px !important; }
.rating-radio input { margin-right: 2px !important; width: 13px !important; height: 13px !important; }
"""


def build_demo(registry: Registry | None = None, rating_scheduler_cls=None) -> gr.Blocks:
    """The app. `registry` decides where checkpoints come from (default: the environment, see space.registry)."""
    registry = registry or Registry()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nChat with every policy the lab trained (base, SFT, PPO full and LoRA, DPO, GRPO), "
                    "alone or side by side, score text with the reward model, follow the training curves, read the "
                    "evaluation, rate answers blind, vote between two anonymous policies in the arena, and sample "
                    "synthetic chest X-rays. Checkpoints load on first use.")
        status = gr.Markdown(pipeline_status_markdown(registry), elem_id="pipeline-status")
        status_timer = gr.Timer(10)
        with gr.Tabs():
            chat_box, policy_picker, arena_picker = build_chat_tab(registry)
            reward_box = build_reward_tab(registry)
            build_curves_tab(registry, demo)
            build_evaluation_tab(registry, demo)
            build_rating_tab(registry, demo, scheduler_cls=rating_scheduler_cls)
            build_arena_tab(registry, scheduler_cls=rating_scheduler_cls)
            build_leaderboard_tab(registry, demo)
            build_xrays_tab(registry, demo)
            build_about_tab(registry, demo)

        def checkpoint_status():
            """Re-check which checkpoints exist (one appearing while the app runs is picked up)."""
            return chat_notice(registry), registry.notice("reward")

        demo.load(checkpoint_status, None, [chat_box, reward_box], api_name="checkpoint_status")
        demo.load(lambda p, a: refresh_pickers(registry, p, a), [policy_picker, arena_picker],
                  [policy_picker, arena_picker], api_name=False, queue=False)

        def follow_pipeline(shown, policy, policies):
            """While the pipeline trains: its status line, and the policy pickers grow as checkpoints land."""
            text = pipeline_status_markdown(registry)
            if not text and not shown:
                return gr.skip(), gr.skip(), gr.skip()
            return (text, *refresh_pickers(registry, policy, policies))

        status_timer.tick(follow_pipeline, [status, policy_picker, arena_picker], [status, policy_picker, arena_picker],
                          api_name=False, queue=False, show_progress="hidden")
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def launch_kwargs(registry: Registry) -> dict:
    """Arguments of demo.launch() the app needs whoever launches it (app.py, tests, benchmarks)."""
    # show_error: an unexpected failure reaches the user as its message rather than a generic "error".
    return dict(css=CSS, allowed_paths=[str(registry.checkpoints_dir / "eval")], show_error=True)
