"""The app under load: N concurrent gradio_client sessions alternate chat and reward-score requests for D seconds;
reports failed and lost requests, latency per endpoint, throughput, and resident memory at the end against after
warm-up.

It starts `python app.py` as a separate process on a free 127.0.0.1 port, as bench_app.py does. Every session is
its own gradio_client.Client in its own thread, so it has its own conversation state on the server; a session
clears its conversation every few turns, as a user would, so prompts stay short. A request is *lost* when it was
submitted but neither answered nor failed by the end of the run plus a grace period.

    python bench/bench_load.py [--clients 20] [--duration-s 120] [--checkpoints DIR] [--policies base,full,lora]

Exits with status 1 when any request failed or was lost, or memory grew more than --max-memory-growth.

Batched decode loop against one-at-a-time (issue 28): `--sessions 1,5,10,20` starts two apps side by side, one with
the batched loop and one with RLHFLAB_SERVING=0 (each request decodes alone under its model's lock, as before the
loop), and runs every mix (chat: one policy a turn, rotating; arena: two policies side by side through /compare)
at every session count on each app in turn, so load from other jobs falls on both alike. Per row: time to the
first streamed token and to the whole answer (p50/p95), total tokens/s, failed and lost turns, resident memory.

    python bench/bench_load.py --make-store /tmp/load-store --sessions 1,5,10,20 --mixes chat,arena \
        --duration-s 30 --grace-s 45 --max-new-tokens 128      # writes bench/load_matrix.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from bench_app import SETTINGS, _rss_mb, _wait_until_up, start_app, stop_app

RESULTS = HERE / "results.json"
PROMPTS = ["Give me one tip for sleeping better.", "What is a good name for a cat?", "How do I boil an egg?",
           "Say something kind.", "Name three colours.", "What should I cook tonight?"]
RESPONSES = ["Go to bed at the same time every day.", "Whiskers.", "Put it in boiling water for eight minutes.",
             "You are doing well.", "Red, green and blue.", "A vegetable soup with bread."]
TURNS_PER_CONVERSATION = 4  # a session clears its chat after this many answers, so prompts stay short
SEED = 0


@dataclass
class Request:
    session: int
    endpoint: str
    start_s: float  # since the load phase began
    latency_s: float | None = None
    ok: bool | None = None  # None: submitted, no answer or error yet
    error: str | None = None


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def _chat_args(prompt: str, policy: str, max_new_tokens: int) -> list:
    return [prompt, policy, *{**SETTINGS, "max_new_tokens": max_new_tokens, "seed": SEED}.values()]


def _check(endpoint: str, output) -> str | None:
    """Why an answer that came back is still a failure (None when it is a good answer)."""
    if endpoint == "chat":
        details = output[1] if isinstance(output, (list, tuple)) and len(output) > 1 else None
        if not isinstance(details, dict):
            return f"chat answered without details: {output!r:.200}"
        if details.get("error"):
            return f"chat: {details['error']}"
        if details.get("reward") is None:
            return f"chat answer has no reward score: {details.get('reward_error')}"
    elif endpoint == "score" and not (isinstance(output, float) and math.isfinite(output)):
        return f"score is not a finite number: {output!r:.200}"
    return None


def _session_plan(session: int, policies: list[str]):
    """An endless plan of (endpoint, args) for one session: chat and score alternate; /clear ends a conversation."""
    i = session
    conversation = session
    while True:
        policy = policies[conversation % len(policies)]
        for _ in range(TURNS_PER_CONVERSATION):
            yield "chat", policy, PROMPTS[i % len(PROMPTS)]
            yield "score", PROMPTS[i % len(PROMPTS)], RESPONSES[(i + session) % len(RESPONSES)]
            i += 1
        yield "clear", "one", policy, []
        conversation += 1


def _run_session(session: int, url: str, t0: float, stop_at: float, give_up_at: float, policies: list[str],
                 max_new_tokens: int, records: list[Request], lock: threading.Lock) -> None:
    def new_record(endpoint: str) -> Request:
        rec = Request(session, endpoint, round(time.monotonic() - t0, 3))
        with lock:
            records.append(rec)
        return rec

    try:
        client = _client(url)
    except Exception as exc:  # the session could not even connect: one failed request
        rec = new_record("connect")
        with lock:
            rec.ok, rec.error = False, f"{type(exc).__name__}: {exc}"
        return
    for endpoint, *args in _session_plan(session, policies):
        if time.monotonic() >= stop_at:
            return
        rec = new_record(endpoint)
        started = time.perf_counter()
        try:
            if endpoint == "chat":
                job = client.submit(*_chat_args(args[1], args[0], max_new_tokens), api_name="/chat")
            elif endpoint == "score":
                job = client.submit(*args, api_name="/score")
            else:
                job = client.submit(*args, api_name="/clear")
            output = job.result(timeout=max(0.0, give_up_at - time.monotonic()))
            error = _check(endpoint, output)
        except TimeoutError:
            return  # no answer within the grace period: the record stays unanswered and counts as lost
        except Exception as exc:  # gr.Error, a dropped connection, a full queue...: a failed request
            error = f"{type(exc).__name__}: {exc}".strip()
        with lock:
            rec.latency_s = round(time.perf_counter() - started, 4)
            rec.ok, rec.error = error is None, error


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 3)


def _latency_table(records: list[Request]) -> dict:
    table = {}
    for endpoint in sorted({r.endpoint for r in records}):
        ok = [r.latency_s for r in records if r.endpoint == endpoint and r.ok]
        table[endpoint] = {"requests": sum(r.endpoint == endpoint for r in records), "answered": len(ok),
                           "p50_s": _percentile(ok, 50), "p95_s": _percentile(ok, 95),
                           "max_s": round(max(ok), 3) if ok else None}
    return table


def _warm_up(url: str, policies: list[str], max_new_tokens: int) -> None:
    """One chat per policy (so every model the load uses is loaded) and one score; raises when any fails."""
    client = _client(url)
    for policy in policies:
        error = _check("chat", client.predict(*_chat_args(PROMPTS[0], policy, max_new_tokens), api_name="/chat"))
        if error:
            raise RuntimeError(f"warm-up chat with the {policy} policy failed ({error}); build the checkpoints "
                               f"(python training/pipeline.py --profile demo) or leave it out with --policies.")
    try:
        error = _check("score", client.predict(PROMPTS[0], RESPONSES[0], api_name="/score"))
    except Exception as exc:  # the app's own message says what is missing
        error = str(exc)
    if error:
        raise RuntimeError(f"warm-up score request failed ({error}); the load needs the reward model.")


def _load(url: str, clients: int, duration_s: float, grace_s: float, policies: list[str], max_new_tokens: int,
          sample) -> tuple[list[Request], float]:
    """`clients` concurrent sessions for `duration_s`; the records as they stand at the deadline (+ grace)."""
    records: list[Request] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at, give_up_at = t0 + duration_s, t0 + duration_s + grace_s
    sampling = threading.Event()

    def sample_every_second():
        while not sampling.wait(1.0):
            sample(round(time.monotonic() - t0, 1))

    if sample:
        threading.Thread(target=sample_every_second, daemon=True).start()
    threads = [threading.Thread(target=_run_session, daemon=True, name=f"session-{i}",
                                args=(i, url, t0, stop_at, give_up_at, policies, max_new_tokens, records, lock))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, give_up_at - time.monotonic()))
    with lock:  # a straggler may still finish after this; what counts is the state at the deadline
        snapshot = [Request(**asdict(r)) for r in records]
    sampling.set()
    return snapshot, time.monotonic() - t0


def run(clients: int = 20, duration_s: float = 120, checkpoints: str | None = None, base_model: str | None = None,
        policies: tuple[str, ...] = ("base", "full", "lora"), max_new_tokens: int = 16, grace_s: float = 60,
        max_memory_growth: float = 0.10, start_timeout_s: float = 600, warm_up_s: float = 20) -> dict:
    """Start app.py, warm it up, load it, stop it; returns the measurements (`passed` says whether it held)."""
    from rlhflab.models.hardware import hardware_description

    policies = list(policies)
    proc, url, log, _ = start_app(checkpoints, base_model, "bench-load-")
    rss_samples: list[tuple[float, float]] = []  # (seconds since the load began, MB), one a second
    try:
        _wait_until_up(url, proc, start_timeout_s)
        _warm_up(url, policies, max_new_tokens)
        # Memory steps up during the first seconds of concurrent load (allocator arenas, one per serving
        # thread, and torch's per-thread buffers) and then stays flat; the baseline is taken after the same
        # load has run for warm_up_s, so the check measures growth under sustained load, not that first step.
        warm_records, _ = _load(url, clients, warm_up_s, grace_s, policies, max_new_tokens, None)
        rss_warm_mb = _rss_mb(proc.pid)
        snapshot, wall_s = _load(url, clients, duration_s, grace_s, policies, max_new_tokens,
                                 lambda t: rss_samples.append((t, _rss_mb(proc.pid))))
        rss_end_mb = _rss_mb(proc.pid)
        server_alive = proc.poll() is None
    finally:
        stop_app(proc)

    warm_bad = [r for r in warm_records if not r.ok]
    failed = [r for r in snapshot if r.ok is False]
    lost = [r for r in snapshot if r.ok is None]
    answered = [r for r in snapshot if r.ok]
    load_s = max((r.start_s + r.latency_s for r in answered), default=wall_s)
    growth = rss_end_mb / rss_warm_mb - 1
    return {
        "benchmark": "app_under_load",
        "clients": clients,
        "duration_s": duration_s,
        "grace_s": grace_s,
        "policies": policies,
        "max_new_tokens": max_new_tokens,
        "warm_up_s": warm_up_s,
        "warm_up_requests": len(warm_records),
        "warm_up_failed_or_lost": len(warm_bad),
        "requests": len(snapshot),
        "answered": len(answered),
        "failed": len(failed),
        "lost": len(lost),
        "errors": dict(Counter((r.error or "").splitlines()[0][:200] for r in failed).most_common(5)),
        "latency_s": _latency_table(snapshot),
        "throughput_req_s": round(len(answered) / load_s, 2) if load_s else None,
        "rss_after_warm_up_mb": rss_warm_mb,
        "rss_end_mb": rss_end_mb,
        "rss_peak_mb": max([mb for _, mb in rss_samples] + [rss_end_mb]),
        "rss_samples_mb": rss_samples,  # to tell a leak (steady climb) from a one-off step up
        "rss_end_over_warm_up": round(rss_end_mb / rss_warm_mb, 3),
        "max_memory_growth": max_memory_growth,
        "server_alive_at_end": server_alive,
        "passed": not failed and not lost and not warm_bad and growth <= max_memory_growth and server_alive,
        "server_log": log.name,
        "hardware": hardware_description(),
        "python": platform.python_version(),
    }


def markdown_row(result: dict, command: str) -> str:
    """A row for BENCHMARKS.md's table (what | command | baseline | ours | ratio | goal / limited by)."""
    lat = result["latency_s"]

    def pcts(endpoint):
        e = lat.get(endpoint, {})
        return f"{endpoint} p50 {e.get('p50_s')} s / p95 {e.get('p95_s')} s / max {e.get('max_s')} s"

    verdict = "met" if result["passed"] else "**not met**"
    return (f"| App under load: {result['clients']} sessions × {result['duration_s']:g} s, chat "
            f"({','.join(result['policies'])}, {result['max_new_tokens']} tokens) + score | `{command}` | "
            f"RSS after warm-up {result['rss_after_warm_up_mb']:.0f} MB | {result['requests']} requests, "
            f"{result['failed']} failed, {result['lost']} lost, {result['throughput_req_s']} req/s; "
            f"{pcts('chat')}; {pcts('score')} | RSS at end {result['rss_end_mb']:.0f} MB "
            f"(**{result['rss_end_over_warm_up']:.3f}×**) | no failed or lost request, memory within "
            f"{result['max_memory_growth']:.0%}: {verdict} |")


# ---------------------------------------------------------------- batched loop against one-at-a-time (issue 28)

CHAT_PROMPTS = ["Give me three tips for sleeping better.", "Explain why the sky is blue.",
                "How do I boil an egg? Give me the steps.", "Write a short poem about autumn.",
                "What should I cook tonight with rice, eggs and spinach?", "Tell me a fun fact about octopuses.",
                "How can I learn to cook as a beginner?", "What is a good way to start running?"]
ARENA_PAIRS = [("base", "lora"), ("lora", "full"), ("base", "full")]
PATH_ENV = {"batched": {"RLHFLAB_SERVING": "1"}, "locked": {"RLHFLAB_SERVING": "0"}}


@dataclass
class Turn:
    session: int
    mix: str
    start_s: float
    first_token_s: float | None = None
    answer_s: float | None = None
    tokens: int = 0
    ok: bool | None = None
    error: str | None = None


def _streamed_text(output, sides: int) -> bool:
    """Whether an update shows answer text (not the placeholder, a 'waiting' or 'sampling' note)."""
    from bench_app import _assistant_text

    if not isinstance(output, (list, tuple)):
        return False
    for chatbot in output[:sides]:
        text = _assistant_text(chatbot) if isinstance(chatbot, list) else ""
        if text and not text.startswith(("*waiting", "*sampling")):
            return True
    return False


def _turn_outcome(mix: str, output, sides: list[str]) -> tuple[str | None, int]:
    """(why the answer is a failure or None, tokens answered)."""
    details = output[1] if mix == "chat" else output[4] if isinstance(output, (list, tuple)) and len(output) > 4 else None
    if not isinstance(details, dict):
        return f"{mix} answered without details: {output!r:.200}", 0
    results = [details] if mix == "chat" else [details.get(s) or {} for s in sides]
    for r in results:
        if r.get("error"):
            return f"{mix}: {r['error']}", 0
        if r.get("reward") is None:
            return f"{mix} answer has no reward score: {r.get('reward_error')}", 0
    return None, sum(int(r.get("tokens") or 0) for r in results)


def _session_turns(session: int, url: str, t0: float, stop_at: float, give_up_at: float, mix: str,
                   policies: list[str], max_new_tokens: int, turns: list[Turn], lock: threading.Lock) -> None:
    client = _client(url)
    i = 0
    while time.monotonic() < stop_at:
        prompt = CHAT_PROMPTS[(session + i) % len(CHAT_PROMPTS)]
        settings = {**SETTINGS, "max_new_tokens": max_new_tokens, "seed": session * 1000 + i}
        if mix == "chat":
            sides = [policies[(session + i) % len(policies)]]
            job = client.submit(prompt, sides[0], *settings.values(), api_name="/chat")
        else:
            pairs = [p for p in ARENA_PAIRS if set(p) <= set(policies)] or [tuple(policies[:2])]
            sides = list(pairs[(session + i) % len(pairs)])
            job = client.submit(prompt, sides, *settings.values(), api_name="/compare")
        turn = Turn(session, mix, round(time.monotonic() - t0, 3))
        with lock:
            turns.append(turn)
        started = time.monotonic()
        first = None
        try:
            while not job.done():
                if first is None and any(_streamed_text(o, len(sides) if mix != "chat" else 1)
                                         for o in job.outputs()[-2:]):
                    first = time.monotonic() - started
                if time.monotonic() > give_up_at:
                    try:  # the server stops working on it, so it does not load the next measurement
                        job.cancel()
                    except Exception:
                        pass
                    return  # unanswered: lost
                time.sleep(0.02)
            output = job.result(timeout=5)
            error, tokens = _turn_outcome(mix, output, sides)
        except Exception as exc:  # gr.Error, dropped connection...: a failed turn
            error, tokens = f"{type(exc).__name__}: {exc}".strip(), 0
        with lock:
            turn.answer_s = round(time.monotonic() - started, 3)
            turn.first_token_s = round(first if first is not None else turn.answer_s, 3)
            turn.ok, turn.error, turn.tokens = error is None, error, tokens
        i += 1
        if i % TURNS_PER_CONVERSATION == 0:  # a fresh conversation: prompts stay short
            try:
                client.predict("one" if mix == "chat" else "all", sides[0], sides if mix != "chat" else [],
                               api_name="/clear")
            except Exception:
                pass


def _load_turns(url: str, sessions: int, duration_s: float, grace_s: float, mix: str, policies: list[str],
                max_new_tokens: int) -> tuple[list[Turn], float]:
    turns: list[Turn] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at, give_up_at = t0 + duration_s, t0 + duration_s + grace_s
    threads = [threading.Thread(target=_session_turns, daemon=True, name=f"session-{i}",
                                args=(i, url, t0, stop_at, give_up_at, mix, policies, max_new_tokens, turns, lock))
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, give_up_at - time.monotonic()))
    with lock:
        snapshot = [Turn(**asdict(t)) for t in turns]
    return snapshot, time.monotonic() - t0


def _summary(turns: list[Turn], wall_s: float) -> dict:
    ok = [t for t in turns if t.ok]
    end = max((t.start_s + t.answer_s for t in ok), default=wall_s)
    return {"turns": len(turns), "answered": len(ok), "failed": sum(t.ok is False for t in turns),
            "lost": sum(t.ok is None for t in turns),
            "ttft_p50_s": _percentile([t.first_token_s for t in ok], 50),
            "ttft_p95_s": _percentile([t.first_token_s for t in ok], 95),
            "answer_p50_s": _percentile([t.answer_s for t in ok], 50),
            "answer_p95_s": _percentile([t.answer_s for t in ok], 95),
            "tokens": sum(t.tokens for t in ok), "tok_s": round(sum(t.tokens for t in ok) / end, 1) if end else None,
            "errors": dict(Counter((t.error or "").splitlines()[0][:160] for t in turns if t.ok is False)
                           .most_common(3))}


def _quiesce(pid: int, max_s: float = 90, busy_cpu_s: float = 0.15) -> None:
    """Wait until the app process uses less than `busy_cpu_s` of CPU per second (at most `max_s`)."""
    import psutil

    proc = psutil.Process(pid)
    deadline = time.monotonic() + max_s
    last = sum(proc.cpu_times()[:2])
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sum(proc.cpu_times()[:2])
        if now - last < busy_cpu_s:
            return
        last = now


def run_matrix(sessions: list[int], mixes: list[str], paths: list[str], duration_s: float, grace_s: float,
               checkpoints: str | None, base_model: str | None, policies: list[str], max_new_tokens: int,
               start_timeout_s: float = 900) -> dict:
    """Both paths' apps started side by side; for every mix and session count, each path in turn under the same
    load (interleaved, so load from other jobs on the host falls on both alike)."""
    from rlhflab.models.hardware import hardware_description

    apps = {}
    try:
        for path in paths:
            apps[path] = start_app(checkpoints, base_model, f"bench-load-{path}-", PATH_ENV[path])
        for path, (proc, url, log, _) in apps.items():
            _wait_until_up(url, proc, start_timeout_s)
            client = _client(url)
            for policy in policies:  # every model loaded and warm before the clock starts
                out = client.predict(CHAT_PROMPTS[0], policy, *{**SETTINGS, "max_new_tokens": 8}.values(),
                                     api_name="/chat")
                error, _ = _turn_outcome("chat", out, [policy])
                if error:
                    raise RuntimeError(f"warm-up chat with {policy} on the {path} app failed: {error}")
        rss_start = {path: _rss_mb(proc.pid) for path, (proc, *_) in apps.items()}
        rows = []
        for mix in mixes:
            for n in sessions:
                for path in paths:
                    proc, url, *_ = apps[path]
                    for other, *_ in apps.values():  # neither app still busy with the last measurement's leftovers
                        _quiesce(other.pid)
                    turns, wall = _load_turns(url, n, duration_s, grace_s, mix, policies, max_new_tokens)
                    row = {"mix": mix, "sessions": n, "path": path, "wall_s": round(wall, 1),
                           **_summary(turns, wall), "rss_mb": _rss_mb(proc.pid),
                           "alive": proc.poll() is None}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        for proc, *_ in apps.values():
            stop_app(proc)
    return {"benchmark": "load_batched_vs_locked", "sessions": sessions, "mixes": mixes, "paths": paths,
            "duration_s": duration_s, "grace_s": grace_s, "policies": policies, "max_new_tokens": max_new_tokens,
            "rss_after_warm_up_mb": rss_start, "rows": rows, "server_logs": {p: a[2].name for p, a in apps.items()},
            "hardware": hardware_description(), "python": platform.python_version()}


def matrix_table(result: dict) -> str:
    """Markdown rows: one per mix and session count, both paths side by side."""
    lines = ["| mix | sessions | path | answered (failed, lost) | TTFT p50 / p95 s | answer p50 / p95 s | total tok/s "
             "| RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['mix']} | {r['sessions']} | {r['path']} | {r['answered']} ({r['failed']}, {r['lost']}) | "
                     f"{r['ttft_p50_s']} / {r['ttft_p95_s']} | {r['answer_p50_s']} / {r['answer_p95_s']} | "
                     f"{r['tok_s']} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def make_store(folder: str, base_model: str = "smollm2-135m-instruct") -> Path:
    """A checkpoint store for the load bench on the real base: a reward model (the base with a fresh score head),
    a 'full PPO' policy (the base, slightly perturbed) and a 'LoRA PPO' adapter (small random deltas), so chat and
    arena turns exercise the shared-base loop with adapters, a second loop, and reward scoring, at real cost."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from rlhflab.models.loading import load_causal_lm, model_path

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    src = model_path(base_model)
    model, tok = load_causal_lm(base_model)
    torch.manual_seed(0)
    if not (root / "reward" / "config.json").exists():
        reward = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
        reward.config.pad_token_id = tok.pad_token_id
        reward.save_pretrained(root / "reward")
        tok.save_pretrained(root / "reward")
        (root / "reward" / "README.md").write_text("# Load-bench reward model\n\nThe base with a fresh score head.\n")
    if not (root / "ppo-full" / "config.json").exists():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * p.std() * torch.randn_like(p))
        model.save_pretrained(root / "ppo-full")
        tok.save_pretrained(root / "ppo-full")
        (root / "ppo-full" / "README.md").write_text("# Load-bench full policy\n\nThe base, slightly perturbed.\n")
        model, tok = load_causal_lm(base_model)
    if not (root / "ppo-lora" / "adapter_config.json").exists():
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.02)
        peft_model.save_pretrained(root / "ppo-lora")
        cfg_path = root / "ppo-lora" / "adapter_config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": base_model}))
        tok.save_pretrained(root / "ppo-lora")
        (root / "ppo-lora" / "README.md").write_text("# Load-bench LoRA policy\n\nSmall random adapter.\n")
    return root


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20, help="concurrent client sessions")
    parser.add_argument("--duration-s", type=float, default=120, help="seconds during which requests are sent")
    parser.add_argument("--grace-s", type=float, default=60,
                        help="after the run, seconds to wait for outstanding answers before counting them lost")
    parser.add_argument("--checkpoints", default=None, help="checkpoint store (default: checkpoints/ or "
                                                            "RLHFLAB_CHECKPOINTS)")
    parser.add_argument("--base-model", default=None, help="base policy (default: RLHFLAB_BASE_MODEL, the LoRA "
                                                           "adapter's base, or the embedded SmolLM2-135M)")
    parser.add_argument("--policies", default="base,full,lora", help="policies the chat requests rotate through")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--warm-up-s", type=float, default=20,
                        help="seconds of the same concurrent load before the memory baseline is taken")
    parser.add_argument("--max-memory-growth", type=float, default=0.10,
                        help="largest allowed RSS growth from after warm-up to the end, as a fraction")
    parser.add_argument("--results", default=str(RESULTS),
                        help="merge the result into this JSON file under the key 'load' ('' to skip)")
    parser.add_argument("--sessions", default=None,
                        help="batched loop against one-at-a-time: comma-separated session counts (e.g. 1,5,10,20); "
                             "runs --mixes x --paths with --duration-s each and writes --matrix-out")
    parser.add_argument("--mixes", default="chat,arena", help="chat: one policy per turn; arena: two side by side")
    parser.add_argument("--paths", default="locked,batched", help="locked: RLHFLAB_SERVING=0; batched: the loop")
    parser.add_argument("--make-store", default=None, help="write the load bench's checkpoint store here first "
                                                           "(reward, ppo-full, ppo-lora on the real base) and use it")
    parser.add_argument("--matrix-out", default=str(HERE / "load_matrix.json"))
    args = parser.parse_args(argv)
    command = " ".join(["python", "bench/bench_load.py", *(argv if argv is not None else sys.argv[1:])])
    if args.make_store:
        args.checkpoints = str(make_store(args.make_store))
    if args.sessions:
        result = run_matrix([int(n) for n in args.sessions.split(",")], args.mixes.split(","), args.paths.split(","),
                            args.duration_s, args.grace_s, args.checkpoints, args.base_model,
                            [p for p in args.policies.split(",") if p], args.max_new_tokens)
        result["command"] = command
        result["measured"] = datetime.now(timezone.utc).isoformat(timespec="minutes")
        Path(args.matrix_out).write_text(json.dumps(result, indent=2))
        print(matrix_table(result))
        print(f"wrote {args.matrix_out}; {result['hardware']}")
        return result
    result = run(clients=args.clients, duration_s=args.duration_s, checkpoints=args.checkpoints,
                 base_model=args.base_model, policies=tuple(p for p in args.policies.split(",") if p),
                 max_new_tokens=args.max_new_tokens, grace_s=args.grace_s, max_memory_growth=args.max_memory_growth,
                 warm_up_s=args.warm_up_s)
    result["command"] = command
    print(f"{result['requests']} requests from {result['clients']} sessions in {result['duration_s']:g} s: "
          f"{result['answered']} answered, {result['failed']} failed, {result['lost']} lost; "
          f"{result['throughput_req_s']} req/s")
    for endpoint, e in result["latency_s"].items():
        print(f"  {endpoint:6s} {e['answered']:5d} answered  p50 {e['p50_s']} s  p95 {e['p95_s']} s  "
              f"max {e['max_s']} s")
    for error, n in result["errors"].items():
        print(f"  failed ×{n}: {error}")
    print(f"resident memory: {result['rss_after_warm_up_mb']:.0f} MB after warm-up, {result['rss_end_mb']:.0f} MB "
          f"at the end ({result['rss_end_over_warm_up']:.3f}×), peak {result['rss_peak_mb']:.0f} MB")
    samples = result["rss_samples_mb"]
    if samples:
        step = max(1, len(samples) // 8)
        print("  RSS over the run: " + ", ".join(f"{mb:.0f} MB at {t:g} s" for t, mb in samples[::step]))
    print(f"{'PASSED' if result['passed'] else 'FAILED'}; server log {result['server_log']}; {result['hardware']}")
    print(markdown_row(result, command))
    if args.results:
        path = Path(args.results)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results["load"] = {**result, "measured": datetime.now(timezone.utc).isoformat(timespec="minutes")}
        path.write_text(json.dumps(results, indent=2, default=str))
    if not result["passed"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
