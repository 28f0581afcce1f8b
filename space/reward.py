"""Reward-model tab: score a prompt + response, or compare two responses as P(A preferred) = σ(r_A − r_B)."""
from __future__ import annotations

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.measure.scoring import DEFAULT_MAX_LENGTH, preference_probability, score_responses
from space.chat import MAX_MESSAGE_CHARS
from space.registry import Registry

REWARD_CONCURRENCY = 2


def _scores(registry: Registry, prompt: str, responses: list[str]) -> list[float]:
    if not all((r or "").strip() for r in responses):
        raise gr.Error("Type a response to score (an empty response has no reward).")
    try:
        model, tokenizer = registry.reward_model()
    except UserError as exc:
        raise gr.Error(str(exc)) from None
    # The model reads at most DEFAULT_MAX_LENGTH tokens (prompt cut from the left, response from the
    # right), so cut absurd pastes the same way before tokenizing them: the score is unchanged.
    prompt = str(prompt or "")[-MAX_MESSAGE_CHARS:]
    responses = [str(r)[:MAX_MESSAGE_CHARS] for r in responses]
    return score_responses(model, tokenizer, [prompt] * len(responses), responses)


def _score_box(label: str, elem_id: str) -> gr.Textbox:
    """A read-only box that stays empty until something is scored."""
    return gr.Textbox(label=label, placeholder="not scored yet", interactive=False, max_lines=1, elem_id=elem_id)


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def build_reward_tab(registry: Registry) -> gr.Markdown:
    """The Reward model tab; returns its notice box."""
    with gr.Tab("Reward model", id="reward"):
        notice = gr.Markdown(registry.notice("reward"), elem_id="reward-notice")
        gr.Markdown("The reward model gives a scalar score to a prompt + response (higher = preferred). Scores are "
                    "only meaningful relative to each other, for the same prompt. The model reads at most "
                    f"{DEFAULT_MAX_LENGTH} tokens: a long prompt is cut from the start, a long response at the end.")
        prompt = gr.Textbox(label="Prompt", lines=3, value="How do I keep basil fresh?")
        with gr.Row():
            with gr.Column():
                response_a = gr.Textbox(label="Response A", lines=5, value="Trim the stems and keep it in a glass of "
                                        "water at room temperature, loosely covered with a plastic bag.")
                score_btn = gr.Button("Score response A", variant="primary")
                score_box = _score_box("Reward-model score of A", "reward-score")
            with gr.Column():
                response_b = gr.Textbox(label="Response B", lines=5, value="Basil is a plant.")
                compare_btn = gr.Button("Compare A and B", variant="primary")
        with gr.Row():
            score_a_box, score_b_box = _score_box("score A", "reward-score-a"), _score_box("score B", "reward-score-b")
            prob_box = _score_box("P(A preferred over B) = σ(r_A − r_B)", "reward-probability")
        verdict = gr.Markdown()
        # The API's numbers. A gr.Number shows 0 until it holds a value (its frontend turns None into 0), which
        # reads as a real score, so the numbers travel in hidden Numbers and the boxes above show them as text.
        score_out, score_a, score_b, prob = (gr.Number(precision=4, visible="hidden") for _ in range(4))

    def score(prompt, response):
        """Reward-model score of one response to a prompt."""
        return _scores(registry, prompt, [response])[0]

    def compare_responses(prompt, response_a, response_b):
        """Scores of two responses to the same prompt and P(A preferred over B) under Bradley–Terry."""
        r_a, r_b = _scores(registry, prompt, [response_a, response_b])
        p = preference_probability(r_a, r_b)
        winner = "A" if p > 0.5 else "B" if p < 0.5 else "neither"
        text = (f"The reward model prefers **{winner}**: P(A ≻ B) = σ({r_a:+.3f} − ({r_b:+.3f})) = **{p:.3f}**."
                if winner != "neither" else "The reward model scores both responses the same (P = 0.5).")
        return r_a, r_b, p, text

    def shown(*numbers):
        return tuple(_shown(x) for x in numbers)

    common = dict(concurrency_id="reward", concurrency_limit=REWARD_CONCURRENCY)
    shown_step = dict(api_visibility="private", queue=False, show_progress="hidden")
    gr.on([score_btn.click], score, [prompt, response_a], [score_out], api_name="score",
          show_progress_on=[score_box], **common).success(_shown, [score_out], [score_box], **shown_step)
    gr.on([compare_btn.click], compare_responses, [prompt, response_a, response_b], [score_a, score_b, prob, verdict],
          api_name="compare_responses", show_progress_on=[score_a_box, score_b_box, prob_box, verdict],
          **common).success(shown, [score_a, score_b, prob], [score_a_box, score_b_box, prob_box], **shown_step)
    return notice
