"""The app's latency and memory: cold start (process start until the server answers), time to the first streamed
token of one policy (first request, which loads the model, and a second one), and resident memory once every
available model is loaded.

It starts `python app.py` as a separate process on a free port and drives it with gradio_client, exactly as a
user's browser would reach it. Checkpoints come from the usual places (checkpoints/, RLHFLAB_* variables).

    python bench/bench_app.py [--policy base] [--checkpoints DIR] [--base-model NAME] [--max-new-tokens 32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = dict(temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.1, no_repeat_ngram_size=0,
                max_new_tokens=32, seed=0, greedy=False, best_of_n=1)  # the order of /chat's parameters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"app.py did not answer within {timeout_s} s")


def _rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    return round(total / 2**20, 1)


def _assistant_text(chatbot) -> str:
    if not chatbot or chatbot[-1].get("role") != "assistant":
        return ""
    content = chatbot[-1]["content"]
    if not isinstance(content, str):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content.strip().strip("…").strip()


def _time_chat(client, policy: str, prompt: str, max_new_tokens: int) -> dict:
    """Seconds until the first answer text appears, and until the answer (with its reward score) is complete."""
    t0 = time.perf_counter()
    job = client.submit(prompt, policy, *{**SETTINGS, "max_new_tokens": max_new_tokens}.values(), api_name="/chat")
    first = None
    while not job.done():
        if first is None and any(_assistant_text(o[0]) for o in job.outputs() if isinstance(o, (list, tuple))):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    chatbot, details, _ = job.result()
    total = time.perf_counter() - t0
    if details.get("error"):
        raise RuntimeError(details["error"])
    return {"first_token_s": round(first if first is not None else total, 3), "answer_s": round(total, 3),
            "tokens": details["tokens"], "tokens_per_s": round(details["tokens"] / total, 1) if total else None}


def start_app(checkpoints: str | None, base_model: str | None, log_prefix: str, extra_env: dict | None = None):
    """app.py on a free loopback port: (process, url, log file, perf_counter just before the start)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", **(extra_env or {})}
    if checkpoints:
        env["RLHFLAB_CHECKPOINTS"] = str(Path(checkpoints).resolve())
    if base_model:
        env["RLHFLAB_BASE_MODEL"] = base_model
    log = tempfile.NamedTemporaryFile("w+", prefix=log_prefix, suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, url, log, t0


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def run(policy: str = "base", checkpoints: str | None = None, base_model: str | None = None,
        max_new_tokens: int = 32, prompt: str = "Give me three tips for learning to cook.",
        timeout_s: float = 600) -> dict:
    """Start app.py, measure, stop it; returns the measurements and where they were taken."""
    from gradio_client import Client

    from rlhflab.models.hardware import hardware_description

    proc, url, log, t0 = start_app(checkpoints, base_model, "bench-app-")
    try:
        _wait_until_up(url, proc, timeout_s)
        cold_start_s = time.perf_counter() - t0
        rss_started_mb = _rss_mb(proc.pid)
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        first = _time_chat(client, policy, prompt, max_new_tokens)  # loads the model
        second = _time_chat(client, policy, prompt, max_new_tokens)
        # Load every other model through the app: the three policies and the reward model, then the generator.
        loaded = {}
        *_, details, _ = client.predict(prompt, ["base", "full", "lora"], *{**SETTINGS, "max_new_tokens": 1}.values(),
                                       api_name="/compare")
        for name in ("base", "full", "lora"):
            loaded[name] = details[name]["error"] or "loaded"
        loaded["reward"] = details["base"].get("reward_error") or ("loaded" if details["base"]["reward"] is not None
                                                                   else "not used")
        try:
            client.predict(0, api_name="/sample_xrays")
            loaded["dcgan"] = "loaded"
        except Exception as exc:  # a missing generator is reported, not fatal
            loaded["dcgan"] = str(exc).splitlines()[-1][:200]
        rss_all_mb = _rss_mb(proc.pid)
    finally:
        stop_app(proc)
    return {
        "benchmark": "app_latency_and_memory",
        "cold_start_s": round(cold_start_s, 2),
        "policy": policy,
        "max_new_tokens": max_new_tokens,
        "first_request": first,
        "second_request": second,
        "rss_after_start_mb": rss_started_mb,
        "rss_all_models_loaded_mb": rss_all_mb,
        "models": loaded,
        "server_log": log.name,
        "hardware": hardware_description(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="base", choices=("base", "full", "lora"),
                        help="policy whose time to first token is measured")
    parser.add_argument("--checkpoints", default=None, help="checkpoint store (default: checkpoints/ or "
                                                            "RLHFLAB_CHECKPOINTS)")
    parser.add_argument("--base-model", default=None, help="base policy (default: RLHFLAB_BASE_MODEL, the LoRA "
                                                           "adapter's base, or the embedded SmolLM2-135M)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run(policy=args.policy, checkpoints=args.checkpoints, base_model=args.base_model,
                 max_new_tokens=args.max_new_tokens)
    first, second = result["first_request"], result["second_request"]
    print(f"cold start (process start -> server answers): {result['cold_start_s']:.2f} s")
    print(f"{result['policy']}: first token {first['first_token_s']:.3f} s on the first request (loads the model), "
          f"{second['first_token_s']:.3f} s on the next; {second['tokens']} tokens in {second['answer_s']:.2f} s")
    print(f"resident memory: {result['rss_after_start_mb']:.0f} MB after start, "
          f"{result['rss_all_models_loaded_mb']:.0f} MB with every available model loaded")
    print("models: " + ", ".join(f"{k} {'loaded' if v == 'loaded' else 'unavailable'}"
                                 for k, v in result["models"].items()))
    print(result["hardware"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
