"""Arena tab: two anonymous policies, drawn at random, answer the visitor's prompt side by side as "A" and "B"; the
visitor votes (A / B / tie / both bad); only then are the names shown, with each answer's reward-model and judge
score. Every battle and vote is one appended record in the VotesStore (rlhflab/store/votes.py), synced to a Hub
dataset like the ratings.

The flow follows FastChat's anonymous arena: one builder, per-side `gr.State`, and one streaming event that advances
both answers. The generation settings are fixed (ARENA_SETTINGS, recorded with each battle; only the seed is drawn
per battle). On a Space (SPACE_ID set) a vote needs a Hugging Face sign-in; elsewhere the voter is the browser
session. The store enforces who may vote on what; this module only asks it.
"""
from __future__ import annotations

import queue
import random
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone

import gradio as gr

from rlhflab.config import DEMO_ANSWER_TOKENS, DEMO_SYSTEM_PROMPT
from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings
from rlhflab.measure.scoring import score_responses
from rlhflab.models.prompts import with_system
from rlhflab.store.votes import VOTE_LABELS, daily_cap, model_names_in
from space.chat import STREAM_INTERVAL_S, generation_concurrency, side_stream
from space.identity import login_button, oauth_required, request_identity
from space.registry import Registry

# The demo's answer budget and system message (rlhflab.config: the base finishes most answers within it, SPEC §9:
# judge complete answers), as the policies were trained and evaluated; whether each answer was cut is recorded with
# the battle and shown on the leaderboard.
ARENA_SETTINGS = GenerationSettings(temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.1,
                                    no_repeat_ngram_size=0, max_new_tokens=DEMO_ANSWER_TOKENS, seed=0, greedy=False,
                                    best_of_n=1)
ARENA_SYSTEM_PROMPT = DEMO_SYSTEM_PROMPT
MAX_PROMPT_CHARS = 4000
METHOD_NAMES = ("SFT", "PPO", "DPO", "GRPO", "RLOO", "KTO", "LoRA")
GENERIC_WORDS = {"base", "full", "lora", "model", "base model", "policy"}
SYNC_FOLDER = "votes-hub"


def model_names(registry: Registry) -> list[str]:
    """Names an answer must not mention: every policy's label and key, the method names, the base model's family."""
    names = set(METHOD_NAMES)
    for key, entry in registry.policy_entries().items():
        names |= {entry.label, key}
    base = registry.resolve("base")
    if base.origin in ("embedded", "hub") and base.source:
        family = re.split(r"[-_]", base.source.split("/")[-1])[0]  # smollm2-135m-instruct -> smollm2
        names |= {family, family.rstrip("0123456789")}
    return sorted(n for n in names if n and n.lower() not in GENERIC_WORDS and len(n) >= 3)


def pick_sides(registry: Registry, rng: random.Random | None = None) -> tuple[str, str]:
    """Two different policies, drawn at random from those available now."""
    keys = [k for k in registry.policy_keys() if registry.resolve(k).available]
    if len(keys) < 2:
        raise UserError("The arena needs at least two policies and there is only "
                        f"{len(keys)}: train one with `python training/sft.py --profile demo` (or run `make demo`).")
    a, b = (rng or random.SystemRandom()).sample(keys, 2)
    return a, b


def stream_in_threads(registry: Registry, sides: list[str], messages: list[dict], settings: GenerationSettings):
    """(side, text so far, None) while the answers grow and (side, None, result) when one ends, both sides at once.

    Each group of policies on the same weights streams in its own thread and holds only its own model's lock, one
    side after the other. Advancing both generators from one thread (space.chat.interleave) holds the first
    model's lock while waiting for the second's: two battles over the same two models in opposite order then wait
    on each other for ever (seen here under 12 concurrent battles, tests/test_arena_attack.py).
    """
    groups: dict[str, list[str]] = {}
    for name in sides:
        try:
            # every policy the batched decode loop serves streams on its own (the loop batches them); the others
            # take turns with the policies on their weights
            groups.setdefault(registry.stream_group(name), []).append(name)
        except UserError:
            groups.setdefault(name, []).append(name)
    updates: queue.Queue = queue.Queue()
    stop_event = threading.Event()  # the visitor left: close the streams, which frees their rows in the decode loop

    def run(names: list[str]):
        for name in names:
            if stop_event.is_set():
                return
            stream = side_stream(registry, name, messages, settings)
            try:
                while True:
                    updates.put((name, next(stream), None))
                    if stop_event.is_set():
                        stream.close()
                        return
            except StopIteration as stop:
                updates.put((name, None, stop.value))
            except Exception as exc:  # side_stream reports its own failures; this is a last resort
                updates.put((name, None, {"answer": "", "tokens": 0, "reward": None, "error": repr(exc)}))

    threads = [threading.Thread(target=run, args=(names,), daemon=True) for names in groups.values()]
    for t in threads:
        t.start()
    done = 0
    try:
        while done < len(sides):
            update = updates.get()
            done += update[2] is not None
            yield update
    finally:
        stop_event.set()


def chat_view(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def make_votes_sync(registry: Registry, scheduler_cls=None):
    """(sync or None, one line saying where votes go): RLHFLAB_VOTES_REPO and HF_TOKEN turn the Hub sync on; one
    JSON line per vote, appended the way the ratings are (space.rating.RatingsSync and its CommitScheduler)."""
    from space.rating import RatingsSync

    repo = (registry.env.get("RLHFLAB_VOTES_REPO") or "").strip()
    token = (registry.env.get("HF_TOKEN") or "").strip()
    if not repo or not token:
        return None, ("Votes are kept in the local SQLite store; set RLHFLAB_VOTES_REPO and HF_TOKEN to also sync "
                      "them to a Hub dataset repo.")
    try:
        sync = RatingsSync(registry.votes_path().parent / SYNC_FOLDER, repo, token, scheduler_cls=scheduler_cls,
                           prefix="votes")
    except Exception as exc:  # no network, bad token: voting still works locally
        return None, f"⚠️ Hub sync to `{repo}` is off ({type(exc).__name__}); votes stay local."
    return sync, f"Every vote is also synced to the Hub dataset `{repo}`."


def build_arena_tab(registry: Registry, scheduler_cls=None) -> None:
    """The Arena tab."""
    sync, sync_text = make_votes_sync(registry, scheduler_cls)
    need_sign_in = oauth_required(registry)
    heldout: list[str] = []
    with gr.Tab("Arena", id="arena"):
        gr.Markdown("Two policies, drawn at random, answer your prompt side by side as **A** and **B**. Vote for "
                    "the better answer; their names are shown only after your vote. Votes build the Leaderboard "
                    f"tab. Settings are fixed for every battle (temperature {ARENA_SETTINGS.temperature}, top-p "
                    f"{ARENA_SETTINGS.top_p}, up to {ARENA_SETTINGS.max_new_tokens} new tokens; both are asked with "
                    f"the system message \"{ARENA_SYSTEM_PROMPT}\", as the policies were trained). " + sync_text
                    + (" **Sign in with Hugging Face to vote.**" if need_sign_in else
                       " Outside a Space your vote is recorded under this browser session."))
        login_button(registry)
        battle_state = gr.State(None)
        side_states = [gr.State(None), gr.State(None)]
        drawn = gr.State(None)
        with gr.Row(equal_height=True):
            chatbots = [gr.Chatbot(label=f"Model {s}", height=420, elem_id=f"arena-{s.lower()}",
                                   feedback_options=None, buttons=["copy"]) for s in "AB"]
        with gr.Row():
            vote_buttons = [gr.Button(VOTE_LABELS[v], interactive=False, elem_id=f"arena-vote-{v.lower()}")
                            for v in ("A", "B", "tie", "both_bad")]
        reveal = gr.Markdown(elem_id="arena-reveal")
        with gr.Row():
            prompt = gr.Textbox(placeholder="Type a prompt for both models and press Enter", show_label=False,
                                lines=1, max_lines=6, scale=6, elem_id="arena-input")
            fight = gr.Button("Battle", variant="primary", scale=1, min_width=90, elem_id="arena-battle")
            draw = gr.Button("Draw a held-out prompt", scale=1, min_width=120, elem_id="arena-draw")
        status = gr.Markdown(elem_id="arena-status")

    def store():
        try:
            return registry.votes_store()
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def draw_prompt():
        """A random held-out prompt (never trained on) into the prompt box."""
        if not heldout:
            heldout.extend(registry.heldout_prompts())
        if not heldout:
            raise gr.Error("There are no held-out prompts yet (a policy run saves them); type a prompt instead.")
        text = random.SystemRandom().choice(heldout)
        return text, text

    def buttons(active: bool):
        return [gr.Button(interactive=active) for _ in vote_buttons]

    def battle(text, drawn_text, request: gr.Request):
        """Two random policies answer `text` side by side, streaming, named only A and B."""
        text = "" if text is None else str(text)[:MAX_PROMPT_CHARS]
        if not text.strip():
            raise gr.Error("Type a prompt (or draw a held-out one) first.")
        session = getattr(request, "session_hash", None)
        if not session:
            raise gr.Error("This request has no browser session; open the app in a browser.")
        try:
            sides = pick_sides(registry)
            revisions = [registry.revision(k) for k in sides]
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        settings = replace(ARENA_SETTINGS, seed=random.SystemRandom().randrange(2**31 - 1))
        source = "heldout" if drawn_text and text == drawn_text else "typed"
        votes = store()
        battle_id = votes.start_battle(session, sides[0], sides[1], text, settings.as_dict(), revisions[0],
                                       revisions[1], prompt_source=source)
        shown = {"battle_id": battle_id, "complete": False}
        answers = ["…", "…"]
        yield (*[gr.Chatbot(value=chat_view(text, a), label=f"Model {s}") for a, s in zip(answers, "AB")], shown,
               None, None, *buttons(False), "", "")
        messages = with_system(text, ARENA_SYSTEM_PROMPT)
        results: dict[str, dict] = {}
        last = 0.0
        for name, partial, result in stream_in_threads(registry, sides, messages, settings):
            i = sides.index(name)
            if result is None:
                answers[i] = partial
            else:
                results[name] = result
                answers[i] = result["answer"] or ""
            now = time.monotonic()
            if result is not None or now - last >= STREAM_INTERVAL_S:
                last = now
                yield (*[chat_view(text, a) for a in answers], *[gr.skip()] * 3, *[gr.skip()] * 4,
                       gr.skip(), gr.skip())
        failed = [f"Model {'AB'[i]}" for i, n in enumerate(sides) if results.get(n, {}).get("error")]
        if failed:  # the error text may name the policy: keep it out of a battle that is still blind
            yield (*[chat_view(text, a) for a in answers], None, None, None, *buttons(False), "",
                   f"⚠️ {' and '.join(failed)} could not answer; this battle cannot be voted on. Start a new one.")
            return
        per_side = []
        for name in sides:
            r = results[name]
            per_side.append({"policy": name, "answer": r["answer"], "tokens": r["tokens"], "reward": r["reward"],
                             "cut": r["tokens"] >= settings.max_new_tokens})
        named = sorted({n for s in per_side for n in model_names_in(s["answer"], model_names(registry))})
        try:
            votes.complete_battle(battle_id, session, per_side[0]["answer"], per_side[1]["answer"],
                                  cut_a=per_side[0]["cut"], cut_b=per_side[1]["cut"], tokens_a=per_side[0]["tokens"],
                                  tokens_b=per_side[1]["tokens"], named_model=named)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        shown = {"battle_id": battle_id, "complete": True, "prompt": text}
        cut = [f"Model {'AB'[i]}" for i, s in enumerate(per_side) if s["cut"]]
        note = (f"{' and '.join(cut)} reached the {settings.max_new_tokens}-token budget and was cut. " if cut else "")
        yield (*[chat_view(text, a) for a in answers], shown, per_side[0], per_side[1], *buttons(True), "",
               note + "Both answers are complete: which one is better?")

    def judge_scores(text: str, answers: list[str]) -> list[float] | None:
        try:
            model, tok = registry.judge_model()
            return score_responses(model, tok, [with_system(text, ARENA_SYSTEM_PROMPT)] * len(answers), answers)
        except UserError:
            return None
        except Exception:  # a scoring failure costs the judge column, never the vote
            return None

    def make_vote(choice: str):
        def vote(shown, side_a, side_b, profile: gr.OAuthProfile | None, request: gr.Request):
            try:
                if not isinstance(shown, dict) or not shown.get("battle_id"):
                    raise UserError("Start a battle first: type a prompt and press Battle.")
                voter, kind = request_identity(registry, profile, request)
                saved = store().record_vote(shown["battle_id"], getattr(request, "session_hash", None), choice,
                                            voter, kind, cap=daily_cap(registry.env))
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            if sync is not None:
                sync.append({**saved, "voter": voter, "created": datetime.now(timezone.utc).isoformat()})
            sides = [side_a or {}, side_b or {}]
            judged = judge_scores(shown.get("prompt", ""), [s.get("answer", "") for s in sides])
            lines, labels = [], []
            for i, s in enumerate(sides):
                label = registry.policy_label(s.get("policy", "?"))
                labels.append(f"Model {'AB'[i]}: {label}")
                rm = f"{s['reward']:+.3f}" if isinstance(s.get("reward"), (int, float)) else "n/a"
                jd = f"{judged[i]:+.3f}" if judged else "n/a (no judge)"
                lines.append(f"- **{'AB'[i]} was {label}** — reward-model score {rm}, judge score {jd}, "
                             f"{s.get('tokens', 0)} tokens{', cut at the budget' if s.get('cut') else ''}")
            battle = store().battle(shown["battle_id"]) or {}
            dropped = (f"\n\n⚠️ An answer named a model ({battle['named_model']}), so this battle is stored but left "
                       f"out of the leaderboard, as the Chatbot Arena does." if battle.get("named_model") else "")
            text = (f"**Your vote: {VOTE_LABELS[choice]}.** Thank you!\n\n" + "\n".join(lines) + dropped
                    + "\n\nType a new prompt for the next battle.")
            # the battle stays in the session's state: a repeated vote reaches the store, which refuses it
            return text, *buttons(False), gr.Chatbot(label=labels[0]), gr.Chatbot(label=labels[1]), ""
        vote.__doc__ = f"Vote '{VOTE_LABELS[choice]}' on the battle just shown; then the names are revealed."
        vote.__name__ = f"vote_{choice.lower()}"
        return vote

    battle_outputs = [*chatbots, battle_state, *side_states, *vote_buttons, reveal, status]
    generation = dict(concurrency_id="generate", concurrency_limit=generation_concurrency(registry))
    gr.on([fight.click, prompt.submit], battle, [prompt, drawn], battle_outputs, api_name="battle", **generation)
    draw.click(draw_prompt, None, [prompt, drawn], api_name="draw_prompt")
    for choice, button in zip(("A", "B", "tie", "both_bad"), vote_buttons):
        button.click(make_vote(choice), [battle_state, *side_states],
                     [reveal, *vote_buttons, *chatbots, status], api_name=f"vote_{choice.lower()}",
                     concurrency_limit=None)
