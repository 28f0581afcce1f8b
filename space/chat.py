"""Chat tab: talk to any policy the lab has (base, SFT, PPO, DPO, GRPO, ...), or to two to four of them side by
side (arena style), streamed token by token.

Each policy keeps its own multi-turn history (one `gr.State` dict keyed by policy). Side by side, one event
advances every chosen stream in turn (FastChat's arena); every answer decodes as rows of its model's batched decode
loop (the base and the LoRA adapters trained on it in one batch), so all sides stream at once; only models the loop
cannot serve take turns on their weights. Every finished answer is scored by the
reward model when there is one.
"""
from __future__ import annotations

import queue
import threading
import time

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.generation.sampling import (
    SETTING_BOUNDS,
    GenerationSettings,
    generate_batch,
    prompt_token_limit,
    stream_generate,
)
from rlhflab.measure.scoring import score_responses
from rlhflab.models.prompts import format_prompt
from space.registry import Registry

ONE, ALL = "one", "all"
MODE_CHOICES = [("One policy", ONE), ("Side by side (2–4 policies)", ALL)]
MAX_SIDES = 4
DEFAULT_SIDES = ("base", "full", "lora", "dpo", "grpo", "sft")  # the first available of these, up to three
SETTING_NAMES = ("temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens",
                 "seed", "greedy", "best_of_n")
EMPTY_MESSAGE = "Please type a message first — an empty message has nothing to answer."
DISPLAY_CHARS = 2000  # longer user messages are shortened on screen (the model still gets what fits)
MAX_MESSAGE_CHARS = 200_000  # hard cap before tokenizing, so an absurd paste cannot stall a worker
STREAM_INTERVAL_S = 0.05  # at most ~20 screen updates a second: each costs Gradio far more than a token costs us
# Generation events admitted at once. Each decodes as rows of its model's batched decode loop, whose own bounded
# queue turns visitors away with the expected wait; with RLHFLAB_SERVING=0 (one request per model at a time,
# under its lock) two are admitted, as before the loop.
GENERATION_CONCURRENCY = 24
LOCKED_GENERATION_CONCURRENCY = 2


def generation_concurrency(registry: Registry) -> int:
    """Generation events admitted at once (chat, side by side, arena): many with the batched decode loop, whose
    bounded queue refuses the excess with the expected wait; two with RLHFLAB_SERVING=0."""
    return GENERATION_CONCURRENCY if registry.want_serving else LOCKED_GENERATION_CONCURRENCY


def new_histories() -> dict[str, list[dict]]:
    return {}


def history(hists: dict, name: str) -> list[dict]:
    """The conversation with policy `name` (created empty on first use)."""
    return hists.setdefault(name, [])


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
    """Yield one policy's answer as it grows; return a result dict (never raises for a missing or broken model).

    The answer is decoded in the policy's model's batched decode loop (rlhflab.generation.server) with every other
    visitor's; a full queue ends this side with a sentence that gives the expected wait. Closing the generator (the
    visitor left) frees the request's rows at once."""
    result = {"policy": name, "answer": "", "tokens": 0, "reward": None, "notes": [], "candidates": None,
              "error": None, "reward_error": None}
    n = settings.best_of_n
    try:
        with registry.serving(name) as (server, adapter, model, tokenizer):
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
                                             max_prompt_tokens=limit, server=server, adapter=adapter)
            else:
                generation = yield from stream_generate(model, tokenizer, messages, settings, max_prompt_tokens=limit,
                                                        server=server, adapter=adapter)
                generations = [generation]
    except UserError as exc:
        result["error"] = str(exc)
        return result
    except Exception as exc:  # a generation failure ends this side only
        result["error"] = f"{registry.policy_label(name)} failed while generating ({type(exc).__name__}: {exc})."
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


def interleave(streams: dict[str, object], groups: list[list[str]] | None = None, threaded: bool = False):
    """(side, text so far, None) while streaming and (side, None, result) when a side ends, round-robin over the
    weight groups (`groups`; default: every side its own); a group's sides run one after another (their
    generators start lazily), since they share one model and its lock.

    `threaded`: each group runs in a thread of its own and updates come as they arrive, so every side's request
    reaches the decode loop at once (not after the side before it has produced its first token) and a slow side
    never holds up a fast one. Closing this generator closes the sides' generators (their requests are cancelled)."""
    groups = groups or [[name] for name in streams]
    if threaded:
        yield from _interleave_threads(streams, groups)
        return
    active = [_run_in_turn([(n, streams[n]) for n in group if n in streams]) for group in groups]
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


_GROUP_DONE = object()


def _interleave_threads(streams: dict[str, object], groups: list[list[str]]):
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()

    def run(group):
        gens = [(n, streams[n]) for n in group if n in streams]
        try:
            for item in _run_in_turn(gens):
                updates.put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # side_stream reports its own failures; anything else ends the event
            updates.put(exc)
        finally:
            if stop.is_set():
                for _, gen in gens:
                    gen.close()  # in this thread, which owns it: the request's rows are freed
            updates.put(_GROUP_DONE)

    threads = [threading.Thread(target=run, args=(g,), daemon=True, name="side-stream") for g in groups]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            item = updates.get()
            if item is _GROUP_DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()


def _clean_message(message) -> str:
    return "" if message is None else str(message)[:MAX_MESSAGE_CHARS]


def _weight_groups(registry: Registry, sides: list[str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for name in sides:
        try:
            group = registry.stream_group(name)
        except UserError:
            group = name
        groups.setdefault(group, []).append(name)
    return list(groups.values())


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
    groups = _weight_groups(registry, live)
    for queued in groups:
        for i, name in enumerate(queued):
            replies[name]["content"] = "…" if i == 0 else (
                f"*waiting: {registry.policy_label(name)} shares its weights with "
                f"{registry.policy_label(queued[0])}, so it answers once that answer is done…*")
    if results:
        yield results
    streams = {name: side_stream(registry, name, model_messages(histories[name][:-1]), settings) for name in live}
    last_yield = 0.0
    # threads: every side's request reaches its model at once, and a group that waits for its model's lock never
    # holds another's (space.arena.stream_in_threads found that wait)
    for name, text, result in interleave(streams, groups, threaded=True):
        if result is None:
            replies[name]["content"] = text
        else:
            _finish_turn(histories[name], replies[name], result)
            results[name] = result
        now = time.monotonic()
        if result is not None or now - last_yield >= STREAM_INTERVAL_S:
            last_yield = now
            yield results


def policy_choices(registry: Registry) -> list[tuple[str, str]]:
    """(label, key) of every policy available now, base first."""
    return [(e.label, k) for k, e in registry.policy_entries().items()]


def default_sides(keys: list[str]) -> list[str]:
    chosen = [k for k in DEFAULT_SIDES if k in keys][:3]
    return chosen if len(chosen) >= 2 else keys[:3]


def check_sides(registry: Registry, policies) -> list[str]:
    """The side-by-side selection as a list of 2-4 distinct policy keys the lab knows (else a gr.Error)."""
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    if not isinstance(policies, (list, tuple)) or not all(isinstance(p, str) for p in policies):
        raise gr.Error("policies must be a list of 2 to 4 policy names.")
    sides = list(dict.fromkeys(policies))
    if not 2 <= len(sides) <= MAX_SIDES:
        raise gr.Error(f"Choose 2 to {MAX_SIDES} policies to compare side by side (got {len(sides)}).")
    known = set(registry.policy_keys()) | set(registry.missing_policies())
    unknown = [p for p in sides if p not in known]
    if unknown:
        raise gr.Error(f"unknown policy {unknown[0]!r}; choose from {', '.join(registry.policy_keys())}.")
    return sides


def build_chat_tab(registry: Registry) -> tuple[gr.Markdown, gr.Dropdown, gr.CheckboxGroup]:
    """The Chat tab; returns its notice box and the two policy pickers (refreshed on page load)."""
    settings_defaults = GenerationSettings()
    choices = policy_choices(registry)
    keys = [k for _, k in choices]
    with gr.Tab("Chat", id="chat"):
        notice = gr.Markdown(chat_notice(registry), elem_id="chat-notice")
        histories = gr.State(new_histories())
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    mode = gr.Radio(MODE_CHOICES, value=ONE, label="Mode", elem_id="chat-mode", scale=1)
                    policy = gr.Dropdown(choices, value="base", label="Policy", elem_id="chat-policy", scale=2)
                    arena = gr.CheckboxGroup(choices, value=default_sides(keys), label="Policies side by side (2–4)",
                                             elem_id="chat-arena", visible=False, scale=2)
                with gr.Column(visible=True) as single_panel:
                    single_cb = gr.Chatbot(label="Base model", height=480, elem_id="chat-single",
                                           feedback_options=None, buttons=["copy"])
                with gr.Row(visible=False, equal_height=True) as compare_panel:
                    side_cbs = [gr.Chatbot(label=f"side {i + 1}", height=480, elem_id=f"chat-side-{i}",
                                           feedback_options=None, buttons=["copy"], visible=i < 3)
                                for i in range(MAX_SIDES)]
                with gr.Row():
                    msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     lines=1, max_lines=8, elem_id="chat-input")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="send-btn")
                with gr.Row():
                    regen = gr.Button("Regenerate", size="sm", elem_id="regen-btn")
                    clear = gr.Button("Clear", size="sm", elem_id="clear-btn")
                with gr.Accordion("Answer details (JSON)", open=False):
                    details = gr.JSON(label="last answer", elem_id="chat-details")
                # API-only events (gradio_client, tests, benchmarks): one policy, or a chosen 2-4 side by side.
                chat_api = gr.Button(visible=False)
                compare_api = gr.Button(visible=False)
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

    def side_views(hists, sides):
        """The four side chatbots: the chosen policies' conversations, labelled; unused slots hidden."""
        out = []
        for i in range(MAX_SIDES):
            if i < len(sides):
                out.append(gr.Chatbot(value=to_chatbot(hists.get(sides[i], [])), label=registry.policy_label(sides[i]),
                                      visible=True))
            else:
                out.append(gr.Chatbot(value=[], visible=False))
        return out

    def side_values(hists, sides):
        return [to_chatbot(hists.get(sides[i], [])) if i < len(sides) else [] for i in range(MAX_SIDES)]

    def select_policy(mode, policy, policies, hists):
        """Show one policy's conversation, or the chosen policies side by side."""
        hists = hists or new_histories()
        single = mode != ALL
        sides = [p for p in (policies or []) if isinstance(p, str)][:MAX_SIDES]
        return (gr.Column(visible=single), gr.Row(visible=not single), gr.Dropdown(visible=single),
                gr.CheckboxGroup(visible=not single),
                gr.Chatbot(value=to_chatbot(hists.get(policy, [])), label=registry.policy_label(policy or "base")),
                *side_views(hists, sides))

    def chat(message, policy, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
             max_new_tokens, seed, greedy, best_of_n, hists):
        """Send a message to one policy (any key of the lab's policies); streams the answer, then its reward score."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        known = registry.policy_keys()
        if not isinstance(policy, str) or (policy not in known and policy not in registry.missing_policies()):
            raise gr.Error(f"policy must be one of {', '.join(known)} (use /compare for several side by side), "
                           f"got {policy!r}.")
        hists = hists or new_histories()
        text = _clean_message(message)
        if not text.strip():
            gr.Warning(EMPTY_MESSAGE)
            yield to_chatbot(history(hists, policy)), {"error": EMPTY_MESSAGE}, message, hists
            return
        _start_turn(history(hists, policy), text)
        yield to_chatbot(hists[policy]), gr.skip(), "", hists
        results = {}
        for results in _stream_sides(registry, hists, [policy], settings):
            yield to_chatbot(hists[policy]), gr.skip(), gr.skip(), gr.skip()
        yield to_chatbot(hists[policy]), results.get(policy), "", hists

    def compare(message, policies, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                max_new_tokens, seed, greedy, best_of_n, hists):
        """Send the same message to 2-4 chosen policies and stream their answers side by side (in the order given;
        the four side chatbots show them, unused ones are empty)."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        sides = check_sides(registry, policies)
        hists = hists or new_histories()
        text = _clean_message(message)
        if not text.strip():
            gr.Warning(EMPTY_MESSAGE)
            yield *side_values(hists, sides), {"error": EMPTY_MESSAGE}, message, hists
            return
        for name in sides:
            _start_turn(history(hists, name), text)
        yield *side_values(hists, sides), gr.skip(), "", hists
        results = {}
        for results in _stream_sides(registry, hists, sides, settings):
            yield *side_values(hists, sides), gr.skip(), gr.skip(), gr.skip()
        yield *side_values(hists, sides), results, "", hists

    def send_message(message, mode, policy, policies, *rest):
        """The Send button and Enter: one event whatever the mode, so a message sent right after switching mode
        reaches the mode the radio shows (two buttons swapped by visibility dropped it while the swap was pending)."""
        *settings, hists = rest
        if mode == ALL:
            for update in compare(message, policies, *settings, hists):
                *sides, det, box, h = update
                yield gr.skip(), *sides, det, box, h
        else:
            for cb, det, box, h in chat(message, policy, *settings, hists):
                yield cb, *([gr.skip()] * MAX_SIDES), det, box, h

    def regenerate(mode, policy, policies, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                   max_new_tokens, seed, greedy, best_of_n, hists):
        """Answer the last message again (the shown policy, or the chosen ones side by side) with the current
        settings."""
        settings = parse_settings(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size,
                                  max_new_tokens, seed, greedy, best_of_n)
        hists = hists or new_histories()
        chosen = check_sides(registry, policies) if mode == ALL else []
        sides = chosen if mode == ALL else [policy] if isinstance(policy, str) else []
        sides = [n for n in sides if any(m["role"] == "user" for m in hists.get(n, []))]

        def views():
            return to_chatbot(hists.get(policy, [])) if mode != ALL else [], *side_values(hists, chosen)

        if not sides:
            yield *views(), {"error": "Nothing to regenerate yet: send a message first."}, hists
            return
        for name in sides:
            conversation = hists[name]
            last_user = max(i for i, m in enumerate(conversation) if m["role"] == "user")
            question = conversation[last_user]["content"]
            del conversation[last_user:]
            _start_turn(conversation, question)
        yield *views(), gr.skip(), hists
        results = {}
        for results in _stream_sides(registry, hists, sides, settings):
            yield *views(), gr.skip(), gr.skip()
        yield *views(), results.get(policy, results) if mode != ALL else results, hists

    def clear_chat(mode, policy, policies, hists):
        """Forget the conversation of the shown policy (or of the chosen ones side by side)."""
        hists = hists or new_histories()
        sides = [p for p in (policies or []) if isinstance(p, str)][:MAX_SIDES]
        for name in (sides if mode == ALL else [policy] if isinstance(policy, str) else []):
            hists[name] = []
        single = to_chatbot(hists.get(policy, [])) if mode != ALL else []
        return single, *side_values(hists, sides), None, hists

    def clear_side(index):
        def clear(policies, hists):
            hists = hists or new_histories()
            sides = [p for p in (policies or []) if isinstance(p, str)]
            if index < len(sides):
                hists[sides[index]] = []
            return hists
        clear.__doc__ = f"Forget the conversation shown in side {index + 1} (its chatbot's trash button)."
        return clear

    generation = dict(concurrency_id="generate", concurrency_limit=generation_concurrency(registry))
    view_outputs = [single_panel, compare_panel, policy, arena, single_cb, *side_cbs]
    gr.on([mode.change, policy.change, arena.change], select_policy, [mode, policy, arena, histories], view_outputs,
          api_name="select_policy", queue=False)
    # preprocess=False: out-of-range settings reach GenerationSettings.validate(), whose message names the
    # setting (the slider's own check would only say "Value 5 is greater than maximum value 2").
    # The message box is an output too: emptied when the question is taken (a separate clearing listener
    # only takes effect once the answer is complete, as Gradio holds updates to a running event's inputs).
    gr.on([send.click, msg.submit], send_message, [msg, mode, policy, arena, *settings_inputs, histories],
          [single_cb, *side_cbs, details, msg, histories], api_name="send", preprocess=False, **generation)
    chat_api.click(chat, [msg, policy, *settings_inputs, histories], [single_cb, details, msg, histories],
                   api_name="chat", preprocess=False, **generation)
    compare_api.click(compare, [msg, arena, *settings_inputs, histories], [*side_cbs, details, msg, histories],
                      api_name="compare", preprocess=False, **generation)
    regen.click(regenerate, [mode, policy, arena, *settings_inputs, histories],
                [single_cb, *side_cbs, details, histories], api_name="regenerate", preprocess=False, **generation)
    clear.click(clear_chat, [mode, policy, arena, histories], [single_cb, *side_cbs, details, histories],
                api_name="clear", preprocess=False)
    # A chatbot's own trash button empties what it shows; forget that conversation too.
    single_cb.clear(clear_chat, [mode, policy, arena, histories], [single_cb, *side_cbs, details, histories],
                    api_name="clear_shown", preprocess=False)
    for i, cb in enumerate(side_cbs):
        cb.clear(clear_side(i), [arena, histories], [histories], api_name=f"clear_side_{i + 1}")
    return notice, policy, arena


def refresh_pickers(registry: Registry, policy, policies):
    """Page load: the policy pickers list every policy available now (a checkpoint that landed meanwhile too)."""
    choices = policy_choices(registry)
    keys = [k for _, k in choices]
    value = policy if policy in keys else "base"
    sides = [p for p in (policies or []) if p in keys] or default_sides(keys)
    return gr.Dropdown(choices=choices, value=value), gr.CheckboxGroup(choices=choices, value=sides)


def chat_notice(registry: Registry) -> str:
    """Which policies (and reward scores) are unavailable, and how to make them."""
    lines = []
    for key in registry.missing_policies():
        res = registry.resolve(key)
        lines.append(f"- **{registry.policy_label(key)}**: {registry.missing_message(res)}")
    for key in registry.policy_keys():
        text = registry.notice(key)
        if text:
            lines.append(f"- **{registry.policy_label(key)}**: {text.removeprefix('⚠️ ')}")
    text = registry.notice("reward")
    if text:
        lines.append(f"- **Reward scores**: {text.removeprefix('⚠️ ')}")
    if not lines:
        return ""
    return "⚠️ Some choices are unavailable — the others work:\n" + "\n".join(lines)
