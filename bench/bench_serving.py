"""The batched decode loop (rlhflab.generation.server) on the real embedded model, in the app's precision:

1. tokens/s and step time against the number of rows decoding together (to choose the batch limit), with the
   share of a step spent in the per-row logits processors and sampling;
2. alone against busy: one request decoded alone in the loop, and the same request in a busy batch (rows of other
   lengths, adapters none, sampling, joining and leaving around it). The exact KL per token between the two
   next-token distributions on the same tokens (the busy run is fed the alone run's tokens), over the full
   vocabulary in fp32, and the share of identical tokens when both decode freely (greedy, and sampled with the
   same seed).

    python bench/bench_serving.py [--batches 1,4,8,16,24] [--tokens 48] [--kl-prompts 4] [--kl-tokens 64]

Writes bench/serving.json (and prints a summary). Absolute numbers depend on the host and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

PROMPTS = ["Give me one tip for sleeping better.", "What is a good name for a cat?", "How do I boil an egg?",
           "Explain in a few sentences why the sky is blue.", "Write a short poem about autumn leaves.",
           "What should I cook tonight? I have rice, eggs and spinach.", "Name three colours.",
           "Tell me a fun fact about octopuses."]


def _ids(tok, prompt):
    from rlhflab.generation.sampling import encode_prompts

    batch, _ = encode_prompts(tok, [prompt], 512)
    return batch["input_ids"][0].tolist()


def throughput(server, tok, batch: int, tokens: int) -> dict:
    """`batch` sampled requests of `tokens` tokens submitted at once (no stop token): steady-state rate."""
    from rlhflab.generation.sampling import GenerationSettings

    stats0 = (server.stats.steps, server.stats.tokens, server.stats.step_s, server.stats.sample_s)
    t0 = time.perf_counter()
    reqs = [server.submit(_ids(tok, PROMPTS[i % len(PROMPTS)]),
                          GenerationSettings(max_new_tokens=tokens, seed=i, temperature=0.7, top_k=50, top_p=0.95,
                                             repetition_penalty=1.1)) for i in range(batch)]
    for r in reqs:
        for _ in r.tokens():
            pass
    first = [r.first_token_at - r.submitted for r in reqs]
    wall = time.perf_counter() - t0
    steps = server.stats.steps - stats0[0]
    made = server.stats.tokens - stats0[1]
    step_s = server.stats.step_s - stats0[2]
    sample_s = server.stats.sample_s - stats0[3]
    return {"batch": batch, "tokens": made, "wall_s": round(wall, 3), "tok_s": round(made / wall, 1),
            "ms_per_step": round(1000 * step_s / max(steps, 1), 1), "steps": steps,
            "sampling_share": round(sample_s / step_s, 3) if step_s else None,
            "first_token_s_p50": round(sorted(first)[len(first) // 2], 3), "first_token_s_max": round(max(first), 3)}


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def alone_vs_busy(server, tok, prompts: list[str], n_tokens: int, busy_rows: int) -> dict:
    from rlhflab.generation.sampling import GenerationSettings

    greedy = GenerationSettings(greedy=True, max_new_tokens=n_tokens, repetition_penalty=1.1)
    sampled = GenerationSettings(max_new_tokens=n_tokens, seed=7, temperature=0.7, top_k=50, top_p=0.95,
                                 repetition_penalty=1.1)
    kls, same_greedy, same_sampled, total = [], 0, 0, 0
    per_prompt = []

    def busy():
        """`busy_rows` other requests of other lengths joining over a few steps; returns their handles."""
        out = []
        for i in range(busy_rows):
            out.append(server.submit(_ids(tok, PROMPTS[(i + 3) % len(PROMPTS)] * (1 + i % 3)),
                                     GenerationSettings(max_new_tokens=n_tokens + 16 * (i % 3), seed=100 + i,
                                                        temperature=1.0)))
        return out

    def drain(handles):
        for h in handles:
            for _ in h.tokens():
                pass

    for prompt in prompts:
        ids = _ids(tok, prompt)
        alone = server.submit(ids, greedy, record_logits=True)
        alone_tokens = list(alone.tokens())
        alone_logits = torch.stack(alone.logits)
        others = busy()
        time.sleep(0.2)  # they are prefilling / decoding when ours joins
        forced = server.submit(ids, greedy, forced=alone_tokens, record_logits=True)
        list(forced.tokens())
        busy_logits = torch.stack(forced.logits)
        drain(others)
        kl = _kl(alone_logits, busy_logits)
        kls.append(kl)
        others = busy()
        free = list(server.submit(ids, greedy).tokens())
        drain(others)
        n = min(len(free), len(alone_tokens))
        same_g = sum(a == b for a, b in zip(free[:n], alone_tokens[:n]))
        s_alone = list(server.submit(ids, sampled).tokens())
        others = busy()
        s_busy = list(server.submit(ids, sampled).tokens())
        drain(others)
        m = min(len(s_alone), len(s_busy))
        same_s = sum(a == b for a, b in zip(s_alone[:m], s_busy[:m]))
        same_greedy += same_g
        same_sampled += same_s
        total += n
        per_prompt.append({"prompt": prompt, "tokens": len(alone_tokens), "kl_mean": float(kl.mean()),
                           "kl_max": float(kl.max()), "greedy_identical": f"{same_g}/{n}",
                           "sampled_identical": f"{same_s}/{m}",
                           "greedy_first_divergence": next((i for i, (a, b) in enumerate(zip(free, alone_tokens))
                                                            if a != b), None)})
    allkl = torch.cat(kls)
    return {"prompts": len(prompts), "tokens": int(allkl.numel()), "busy_rows": busy_rows,
            "kl_per_token_mean": float(allkl.mean()), "kl_per_token_max": float(allkl.max()),
            "greedy_identical_share": round(same_greedy / max(total, 1), 4),
            "sampled_identical_share": round(same_sampled / max(total, 1), 4), "per_prompt": per_prompt}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batches", default="1,4,8,16,24")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--kl-prompts", type=int, default=4)
    parser.add_argument("--kl-tokens", type=int, default=64)
    parser.add_argument("--busy-rows", type=int, default=7)
    parser.add_argument("--fp32", action="store_true", help="fp32 weights (default: the app's precision)")
    parser.add_argument("--out", default=str(HERE / "serving.json"))
    args = parser.parse_args(argv)
    from rlhflab.generation.server import DecodeServer
    from rlhflab.models.hardware import hardware_description
    from rlhflab.models.loading import load_causal_lm
    from rlhflab.models.precision import policy_dtype

    dtype = torch.float32 if args.fp32 else policy_dtype(True)
    model, tok = load_causal_lm(args.model, dtype)
    model.eval()
    batches = [int(b) for b in args.batches.split(",") if b]
    server = DecodeServer(model, max_batch=max(batches + [args.busy_rows + 1]), max_queue=64)
    result = {"benchmark": "serving_loop", "command": " ".join(["python", "bench/bench_serving.py", *(argv or
                                                                                                      sys.argv[1:])]),
              "model": args.model, "dtype": str(dtype), "engine": server.engine.kind,
              "hardware": hardware_description(), "python": platform.python_version(),
              "torch_threads": torch.get_num_threads()}
    throughput(server, tok, 2, 8)  # warm-up
    result["throughput"] = []
    for b in batches:
        row = throughput(server, tok, b, args.tokens)
        print(row, flush=True)
        result["throughput"].append(row)
    if args.kl_prompts:
        result["alone_vs_busy"] = alone_vs_busy(server, tok, PROMPTS[:args.kl_prompts], args.kl_tokens,
                                                args.busy_rows)
        summary = {k: v for k, v in result["alone_vs_busy"].items() if k != "per_prompt"}
        print(summary, flush=True)
    server.stop()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}; {result['hardware']}")
    return result


if __name__ == "__main__":
    main()
