"""Chat tab: talk to the base, full-PPO or LoRA-PPO policy, or to all three side by side, streamed token by token.

Each side keeps its own multi-turn history (one `gr.State` dict). Side by side, one event advances all three
streams in turn (FastChat's arena); base and LoRA share one set of weights, so those two take turns while the
full policy streams alongside. Every finished answer is scored by the reward model when there is one.
"""
from __future__ import annotations

import time

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.generation import SETTING_BOUNDS, GenerationSettings, generate_batch, prompt_token_limit, stream_generate
from rlhflab.models import format_prompt
from rlhflab.scoring import score_responses
from space.registry import POLICY_KEYS, Registry

POLICY_LABELS = {"base": "Base model", "full": "Full PPO", "lora": "LoRA PPO"}
ALL = "all"
MODE_CHOICES = [(POLICY_LABELS[k], k) for k in POLICY_KEYS] + [("All three side by side", ALL)]
SETTING_NAMES = ("temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens",
                 "seed", "greedy", "best_of_n")
EMPTY_MESSAGE = "Please type a message first — an empty message has nothing to answer."
DISPLAY_CHARS = 2000  # longer user messages are shortened on screen (the model still gets what fits)
MAX_MESSAGE_CHARS = 200_000  # hard cap before tokenizing, so an absurd paste cannot stall a worker
SHARED_WEIGHTS = (("full",), ("base", "lora"))  # sides in one group run one after the other
STREAM_INTERVAL_S = 0.05  # at most ~20 screen updates a second: each costs Gradio far more than a token costs us
GENERATION_CONCURRENCY = 2  # generation events admitted at once; PolicySet's locks allow one per model


def new_histories() -> dict[str, list[dict]]:
    return {name: [] for name in POLICY_KEYS}


def model_messages(history: list[dict]) -> list[dict]:
    """The conversation a policy sees: display-only notices (missing model, errors) left out."""
    return [{"role": m["role"], "content": m["content"]} for m in history if not m.get("display_only")]


def to_chatbot(history: list[dict]) -> list[dict]:
    out = []
    for m in history:
        content = m["content"]
        if m["role"] == "user" and len(content) > DISPLAY_CHARS:
            content = content[:DISPLAY_CHARS] + f" … *[{len(content):,} characters in total, shortened on screen]*"
        if m.get("note"):
            content = f"{content}\n\n{m['note']}" if content else m["note"]
        out.append({"role": m["role"], "content": content})
    return out


def parse_settings(*values) -> GenerationSettings:
    """Validated settings from values in SETTING_NAMES order; a bad value is rejected naming the setting."""
    try:
        return GenerationSettings(**dict(zip(SETTING_NAMES, values, strict=True))).validate()
    except UserError as exc:
        raise gr.Error(str(exc)) from None


def _n_prompt_tokens(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer(format_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def fit_to_prompt_limit(tokenizer, messages: list[dict], limit: int) -> tuple[list[dict], list[str]]:
    """Drop the oldest exchanges, then cut the last message's end, until the formatted prompt fits `limit` tokens.

    Cutting here rather than from the left of the formatted prompt keeps the chat template (system and
    role markers) intact, so the model still sees a well-formed conversation.
    """
    messages = [dict(m) for m in messages]
    notes: list[str] = []
    dropped = 0
    while len(messages) > 1 and _n_prompt_tokens(tokenizer, messages) > limit:
        messages = messages[2:] if len(messages) > 2 else messages[1:]
        dropped += 1
    if dropped:
        notes.append(f"The {dropped} oldest exchange(s) were left out: the whole conversation no longer fits "
                     f"the model's prompt limit of {limit:,} tokens.")
    total = _n_prompt_tokens(tokenizer, messages)
    if total > limit:
        last = messages[-1]
        ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
        keep = max(1, len(ids) - (total - limit))
        while True:
            last_text = tokenizer.decode(ids[:keep], skip_special_tokens=True)
            messages[-1] = {**last, "content": last_text}
            over = _n_prompt_tokens(tokenizer, messages) - limit
            if over <= 0 or keep == 1:
                break
            keep = max(1, keep - over - 4)  # decode/encode round trips can shift the count a little
        notes.append(f"Your message was truncated: it has {len(ids):,} tokens, and only its first {keep:,} fit the "
                     f"model's prompt limit of {limit:,} tokens (context length minus max new tokens).")
    return messages, notes


def side_stream(registry: Registry, name: str, messages: list[dict], settings: GenerationSettings):
    """Yield one policy's answer as it grows; return a result dict (never raises for a missing or broken model)."""
    result = {"policy": name, "answer": "", "tokens": 0, "reward": None, "notes": [], "candidates": None,
              "error": None, "reward_error": None}
    n = settings.best_of_n
    try:
        with registry.policy(name) as (model, tokenizer):
            limit = prompt_token_limit(tokenizer, model, settings.max_new_tokens)
            messages, notes = fit_to_prompt_limit(tokenizer, messages, limit)
            result["notes"] += notes
            if n > 1 and settings.greedy:
                result["notes"].append(f"Best-of-{n} skipped: greedy decoding would give {n} identical answers.")
                n = 1
            if n > 1:
                try:
                    registry.reward_model()
                except UserError:
                    result["notes"].append(f"Best-of-{n} skipped: reranking needs the reward model, which is "
                                           f"unavailable (see the note at the top of the tab).")
                    n = 1
            if n > 1:
                yield f"*sampling {n} candidates to rerank with the reward model…*"
                generations = generate_batch(model, tokenizer, [messages] * n, settings, batch_size=n,
                                             max_prompt_tokens=limit)
            else:
                generation = yield from stream_generate(model, tokenizer, messages, settings, max_prompt_tokens=limit)
                generations = [generation]
    except UserError as exc:
        result["error"] = str(exc)
        return result
    except Exception as exc:  # a generation failure ends this side only
        result["error"] = f"{POLICY_LABELS[name]} failed while generating ({type(exc).__name__}: {exc})."
        return result
    if any(g.prompt_truncated for g in generations):
        result["notes"].append("The conversation was cut from the left to fit the model's prompt limit.")
    texts = [g.text for g in generations]
    scores = None
    try:
        reward_model, reward_tokenizer = registry.reward_model()
        scores = score_responses(reward_model, reward_tokenizer, [messages] * len(texts), texts)
    except UserError as exc:
        result["reward_error"] = str(exc)
    except Exception as exc:  # a scoring failure costs the score, not the answer
        result["reward_error"] = f"scoring failed ({type(exc).__name__}: {exc})"
    best = max(range(len(texts)), key=lambda i: scores[i]) if scores else 0
    result.update(answer=texts[best], tokens=generations[best].num_tokens,
                  reward=scores[best] if scores else None)
    if n > 1 and scores:
        result["candidates"] = [{"answer": t, "reward": s, "chosen": i == best}
                                for i, (t, s) in enumerate(zip(texts, scores))]
    yield result["answer"]
    return result


def answer_note(result: dict) -> str:
    """The small print under an answer: warnings, its reward score, tokens, best-of-n scores."""
    parts = [f"⚠️ {note}" for note in result["notes"]]
    line = []
    if result["reward"] is not None:
        line.append(f"reward-model score **{result['reward']:+.3f}**")
    elif result.get("reward_error"):
        line.append("no reward score (reward model unavailable)")
    line.append(f"{result['tokens']} tokens")
    if result["candidates"]:
        others = ", ".join(f"{c['reward']:+.3f}" for c in result["candidates"] if not c["chosen"])
        line.append(f"best of {len(result['candidates'])} by reward; the others scored {others}")
    parts.append("*" + " · ".join(line) + "*")
    return "\n\n".join(parts)


def _start_turn(history: list[dict], text: str) -> dict:
    history.append({"role": "user", "content": text})
    reply = {"role": "assistant", "content": ""}
    history.append(reply)
    return reply


def _finish_turn(history: list[dict], reply: dict, result: dict) -> None:
    if result["error"]:
        reply.update(content="", note=f"⚠️ {result['error']}", display_only=True)
        history[-2]["display_only"] = True  # the question stays on screen but out of the model's context
        return
    reply.update(content=result["answer"] or "*(the model produced an empty answer)*", note=answer_note(result))
    if not result["answer"]:
        reply["display_only"] = True
        history[-2]["display_only"] = True


def _run_in_turn(streams: list[tuple[str, object]]):
    for name, stream in streams:
        while True:
            try:
                text = next(stream)
            except StopIteration as stop:
                yield name, None, stop.value
                break
            yield name, text, None


def interleave(streams: dict[str, object]):
    """(side, text so far, None) while streaming and (side, None, result) when a side ends, round-robin over the
    groups of SHARED_WEIGHTS; a group's sides run one after another (their generators start lazily)."""
    active = [_run_in_turn([(n, streams[n]) for n in group if n in streams]) for group in SHARED_WEIGHTS]
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


def _clean_message(message) -> str:
    return "" if message is None else str(message)[:MAX_MESSAGE_CHARS]


def _stream_sides(registry: Registry, histories: dict, sides: list[str], settings: GenerationSettings):
    """Stream `sides` (whose histories end with a user turn and an empty reply); yields after every update."""
    replies = {name: histories[name][-1] for name in sides}
    results: dict[str, dict] = {}
    for name in sides:  # a missing checkpoint is reported at once, not after its turn comes
        res = registry.resolve(name)
        if not res.available:
            results[name] = {"policy": name, "answer": "", "tokens": 0, "reward": None, "notes": [],
                             "candidates": None, "error": registry.missing_message(res), "reward_error": None}
            _finish_turn(histories[name], replies[name], results[name])
    live = [name for name in sides if name not in results]
    for group in SHARED_WEIGHTS:
        queued = [name for name in group if name in live]
        for i, name in enumerate(queued):
            replies[name]["content"] = "…" if i == 0 else (
                f"*waiting: {POLICY_LABELS[name]} shares its weights with {POLICY_LABELS[queued[0]]}, "
                f"so it answers once that answer is done…*")
    if results:
        yield results
    streams = {name: side_stream(registry, name, model_messages(histories[name][:-1]), settings) for name in live}
    last_yield = 0.0
    for name, text, result in interleave(streams):
        if result is None:
            replies[name]["content"] = text
        else:
            _finish_turn(histories[name], replies[name], result)
            results[name] = result
        now = time.monotonic()
        if result is not None or now - last_yield >= STREAM_INTERVAL_S:
            last_yield = now
            yield results


def build_chat_tab(registry: Registry) -> gr.Markdown:
    """The Chat tab; returns its notice box (refreshed on page load)."""
    settings_defaults = GenerationSettings()
    with gr.Tab("Chat", id="chat"):
        notice = gr.Markdown(chat_notice(registry), elem_id="chat-notice")
        histories = gr.State(new_histories())
        with gr.Row():
            with gr.Column(scale=3):
                mode = gr.Radio(MODE_CHOICES, value="base", label="Policy", elem_id="chat-mode")
                with gr.Column(visible=True) as single_panel:
                    single_cb = gr.Chatbot(label=POLICY_LABELS["base"], height=480, elem_id="chat-single",
                                           feedback_options=None, buttons=["copy"])
                with gr.Row(visible=False, equal_height=True) as compare_panel:
                    side_cbs = {name: gr.Chatbot(label=POLICY_LABELS[name], height=480, elem_id=f"chat-{name}",
                                                 feedback_options=None, buttons=["copy"])
                                for name in POLICY_KEYS}
                with gr.Row():
                    msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     lines=1, max_lines=8, elem_id="chat-input")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="send-btn")
                    send_all = gr.Button("Send to all three", variant="primary", scale=1, min_width=90,
                                         visible=False, elem_id="compare-btn")
                with gr.Row():
                    regen = gr.Button("Regenerate", size="sm", elem_id="regen-btn")
                    clear = gr.Button("Clear", size="sm", elem_id="clear-btn")
                with gr.Accordion("Answer details (JSON)", open=False):
                    details = gr.JSON(label="last answer", elem_id="chat-details")
            with gr.Column(scale=1, min_width=260):
                gr.Markdown("**Generation settings** (apply to the next answer)")

                def slider(name, label, step, info=None):
                    lo, hi = SETTING_BOUNDS[name]
                    return gr.Slider(lo, hi, value=getattr(settings_defaults, name), step=step, label=label, info=info)

                temperature = slider("temperature", "Temperature", 0.05)
                top_k = slider("top_k", "Top-k", 1, "0 = off")
                top_p = slider("top_p", "Top-p (nucleus)", 0.05)
                repetition_penalty = slider("repetition_penalty", "Repetition penalty", 0.05)
                no_repeat = slider("no_repeat_ngram_size", "No-repeat n-gram size", 1, "0 = off")
                max_new = slider("max_new_tokens", "Max new tokens", 1)
                seed = gr.Number(value=settings_defaults.seed, precision=0, label="Seed")
                greedy = gr.Checkbox(value=settings_defaults.greedy,
                                     label="Greedy decoding (ignores sampling settings)")
                best_of_n = slider("best_of_n", "Best-of-n", 1, "n samples reranked by the reward model")
        settings_inputs = [temperature, top_k, top_p, repetition_penalty, no_repeat, max_new, seed, greedy, best_of_n]

    all_cbs = [side_cbs[n] for n in POLICY_KEYS]

    def select_policy(policy, hists):
        hists = hists or new_histories()
        single = policy != ALL
        label = POLICY_LABELS.get(policy, POLICY_LABELS["base"])
        return (gr.Column(visible=single), gr.Row(visible=not single), gr.Button(visible=single),
                gr.Button(visible=not single),
                gr.Chatbot(value=to_chatbot(hists.get(policy, [])) if single else [], label=label),
                *[to_chatbot(hists[n]) for n in POLICY_KEYS])

    def chat(message, policy, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
             max_new_tokens, seed, greedy, best_of_n, hists):
        """Send a message to one policy (base, full or lora); streams the answer, then its reward score."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        if policy not in POLICY_KEYS:
            raise gr.Error(f"policy must be one of {', '.join(POLICY_KEYS)} (use /compare for all three), "
                           f"got {policy!r}.")
        hists = hists or new_histories()
        text = _clean_message(message)
        if not text.strip():
            gr.Warning(EMPTY_MESSAGE)
            yield to_chatbot(hists[policy]), {"error": EMPTY_MESSAGE}, message, hists
            return
        _start_turn(hists[policy], text)
        yield to_chatbot(hists[policy]), gr.skip(), "", hists
        results = {}
        for results in _stream_sides(registry, hists, [policy], settings):
            yield to_chatbot(hists[policy]), gr.skip(), gr.skip(), gr.skip()
        yield to_chatbot(hists[policy]), results.get(policy), "", hists

    def compare(message, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, max_new_tokens,
                seed, greedy, best_of_n, hists):
        """Send the same message to all three policies and stream their answers side by side."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        hists = hists or new_histories()
        text = _clean_message(message)
        if not text.strip():
            gr.Warning(EMPTY_MESSAGE)
            yield *[to_chatbot(hists[n]) for n in POLICY_KEYS], {"error": EMPTY_MESSAGE}, message, hists
            return
        for name in POLICY_KEYS:
            _start_turn(hists[name], text)
        yield *[to_chatbot(hists[n]) for n in POLICY_KEYS], gr.skip(), "", hists
        results = {}
        for results in _stream_sides(registry, hists, list(POLICY_KEYS), settings):
            yield *[to_chatbot(hists[n]) for n in POLICY_KEYS], gr.skip(), gr.skip(), gr.skip()
        yield *[to_chatbot(hists[n]) for n in POLICY_KEYS], results, "", hists

    def regenerate(policy, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, max_new_tokens,
                   seed, greedy, best_of_n, hists):
        """Answer the last message again (the shown policy, or all three side by side) with the current settings."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        hists = hists or new_histories()
        sides = list(POLICY_KEYS) if policy == ALL else [policy] if policy in POLICY_KEYS else []
        sides = [n for n in sides if any(m["role"] == "user" for m in hists[n])]

        def views():
            single = to_chatbot(hists[policy]) if policy in POLICY_KEYS else []  # hidden side by side
            return single, *[to_chatbot(hists[n]) for n in POLICY_KEYS]

        if not sides:
            yield *views(), {"error": "Nothing to regenerate yet: send a message first."}, hists
            return
        for name in sides:
            history = hists[name]
            last_user = max(i for i, m in enumerate(history) if m["role"] == "user")
            question = history[last_user]["content"]
            del history[last_user:]
            _start_turn(history, question)
        yield *views(), gr.skip(), hists
        results = {}
        for results in _stream_sides(registry, hists, sides, settings):
            yield *views(), gr.skip(), gr.skip()
        yield *views(), results.get(policy, results), hists

    def clear_chat(policy, hists):
        """Forget the conversation of the shown policy (or of all three side by side)."""
        hists = hists or new_histories()
        for name in (POLICY_KEYS if policy == ALL else [policy] if policy in POLICY_KEYS else []):
            hists[name] = []
        single = to_chatbot(hists[policy]) if policy in POLICY_KEYS else []
        return single, *[to_chatbot(hists[n]) for n in POLICY_KEYS], None, hists

    def clear_side(name):
        def clear(hists):
            hists = hists or new_histories()
            hists[name] = []
            return hists
        clear.__doc__ = f"Forget the {POLICY_LABELS[name]} side's conversation (its chatbot's trash button)."
        return clear

    generation = dict(concurrency_id="generate", concurrency_limit=GENERATION_CONCURRENCY)
    mode.change(select_policy, [mode, histories], [single_panel, compare_panel, send, send_all, single_cb, *all_cbs],
                api_name="select_policy", queue=False)
    # preprocess=False: out-of-range settings reach GenerationSettings.validate(), whose message names the
    # setting (the slider's own check would only say "Value 5 is greater than maximum value 2").
    # The message box is an output too: emptied when the question is taken (a separate clearing listener
    # only takes effect once the answer is complete, as Gradio holds updates to a running event's inputs).
    send.click(chat, [msg, mode, *settings_inputs, histories], [single_cb, details, msg, histories],
               api_name="chat", preprocess=False, **generation)
    send_all.click(compare, [msg, *settings_inputs, histories], [*all_cbs, details, msg, histories],
                   api_name="compare", preprocess=False, **generation)
    # Enter sends through the button of the chosen mode (read from the radio itself, not from which button is
    # visible yet: pressing Enter right after switching mode must not reach the other event).
    msg.submit(None, None, None, js="() => { const m = document.querySelector('#chat-mode input:checked');"
                                    " const b = document.getElementById(m && m.value === 'all' ? 'compare-btn'"
                                    " : 'send-btn'); if (b) b.click(); }")
    regen.click(regenerate, [mode, *settings_inputs, histories], [single_cb, *all_cbs, details, histories],
                api_name="regenerate", preprocess=False, **generation)
    clear.click(clear_chat, [mode, histories], [single_cb, *all_cbs, details, histories], api_name="clear",
                preprocess=False)
    # A chatbot's own trash button empties what it shows; forget that conversation too.
    single_cb.clear(clear_chat, [mode, histories], [single_cb, *all_cbs, details, histories],
                    api_name="clear_shown", preprocess=False)
    for name in POLICY_KEYS:
        side_cbs[name].clear(clear_side(name), [histories], [histories], api_name=f"clear_{name}")
    return notice


def chat_notice(registry: Registry) -> str:
    """Which policies (and reward scores) are unavailable, and how to make them."""
    lines = []
    for key in (*POLICY_KEYS, "reward"):
        text = registry.notice(key)
        if text:
            lines.append(f"- **{POLICY_LABELS.get(key, 'Reward scores')}**: {text.removeprefix('⚠️ ')}")
    if not lines:
        return ""
    return "⚠️ Some choices are unavailable — the others work:\n" + "\n".join(lines)
