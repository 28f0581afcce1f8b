"""What the evaluation's passes cost before and after they stopped doing work nothing reads (issue 27, item 3), on
the embedded base model and the demo's held-out prompts, asked as the evaluation asks them.

    python bench/bench_eval_passes.py [--prompts 50] [--max-new-tokens 128] [--reward-model checkpoints/reward]

Three rows, each the same work's result both ways (asserted), timed in this one command:
- generation: the evaluation's one batch of every prompt, sampled as it samples (temperature 0.7 alone), decoded
  whole to the budget (COMPACT_AT = 0, as before) against dropping finished rows (the default); the token ids of
  both must be equal;
- KL passes for one policy (the base with its weights moved by noise, so the KL is not zero): the evaluation's old
  passes, a k1 pass of each model over the re-tokenised text and then the exact pass, both with the LM head at every
  position, in prompt order, against the one pass that gives exact KL and k1 on the generated tokens, the LM head at
  response positions, 16 sequences at a time batched by length; the exact KL per token of both must agree to 1e-4;
- scoring the answers with the reward model, in prompt order in the generation's batch (64 in the demo: one batch as
  wide as the longest prompt plus the longest answer) against 16 at a time batched by length; scores equal to 1e-4.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import command, machine


def _old_logprobs(model, tokenizer, prompts, responses, batch_size):
    """The evaluation's k1 pass before this change (rlhflab.measure.kl.response_logprobs, removed with it):
    re-tokenised text, the LM head at every position, prompt order, temperature 1."""
    import torch

    from rlhflab.generation.sampling import encode_prompts

    out = []
    for start in range(0, len(prompts), batch_size):
        chunk_p, chunk_r = prompts[start:start + batch_size], responses[start:start + batch_size]
        batch, _ = encode_prompts(tokenizer, chunk_p, 1024)
        resp_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id] for r in chunk_r]
        width = max(len(r) for r in resp_ids)
        resp = torch.full((len(chunk_p), width), tokenizer.pad_token_id, dtype=torch.long)
        resp_mask = torch.zeros((len(chunk_p), width), dtype=torch.long)
        for i, r in enumerate(resp_ids):
            resp[i, :len(r)], resp_mask[i, :len(r)] = torch.tensor(r), 1
        ids = torch.cat([batch["input_ids"], resp], 1)
        mask = torch.cat([batch["attention_mask"], resp_mask], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        ctx = batch["input_ids"].shape[1]
        logp = torch.log_softmax(logits[:, ctx - 1:-1].float(), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
        out += [logp[i, :len(r)] for i, r in enumerate(resp_ids)]
    return out


def _old_exact(policy, base, tokenizer, prompts, response_ids, temperature, batch_size):
    """The exact pass before this change: the LM head at every position, prompt order."""
    import torch

    from rlhflab.measure.kl import exact_kl_sum, response_batch

    def logits_of(model, ids, mask, ctx):
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        return out[:, ctx - 1:-1].float()

    sums, counts = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = response_ids[start:start + batch_size]
        ids, mask, resp_mask, ctx = response_batch(tokenizer, prompts[start:start + batch_size], chunk, 1024)
        p, q = logits_of(policy, ids, mask, ctx), logits_of(base, ids, mask, ctx)
        for i in range(len(chunk)):
            kl, n = exact_kl_sum(p[i], q[i], resp_mask[i], temperature)
            sums.append(float(kl))
            counts.append(int(n))
    return sums, counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--reward-model", default=None, help="default: checkpoints/reward where it exists")
    p.add_argument("--out", default=None, help="write the record as JSON here too")
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from rlhflab.config import CHECKPOINTS_DIR, EvalConfig, PPOConfig, build_config
    from rlhflab.data.oasst1 import load_prompts, split_prompts
    from rlhflab.generation import sampling
    from rlhflab.generation.sampling import GenerationSettings, generate_batch
    from rlhflab.measure.kl import exact_kl_of_responses
    from rlhflab.measure.scoring import encode_for_reward, left_pad, reward_forward, score_responses
    from rlhflab.models.loading import load_causal_lm, load_reward_model
    from rlhflab.models.prompts import with_system

    ppo, ev = build_config(PPOConfig, "demo"), build_config(EvalConfig, "demo")
    _, heldout = split_prompts(load_prompts(ppo.dataset, ppo.lang), ppo.num_prompts, ppo.num_heldout, ppo.seed)
    asked = [with_system(q, ev.system_prompt) for q in heldout[:args.prompts]]
    base, tok = load_causal_lm("smollm2-135m-instruct")[:2]
    settings = GenerationSettings(temperature=ev.temperature, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                  max_new_tokens=args.max_new_tokens, seed=ev.seed)
    rows = {}

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    # warm-up: the first decode packs the engine, the first forward allocates; neither belongs to a row
    generate_batch(base, tok, asked[:2], GenerationSettings(**{**settings.as_dict(), "max_new_tokens": 4}))
    sampling.COMPACT_AT = 0.0
    whole, whole_s = timed(lambda: generate_batch(base, tok, asked, settings, batch_size=ev.batch_size))
    sampling.COMPACT_AT = 0.75
    dropped, dropped_s = timed(lambda: generate_batch(base, tok, asked, settings, batch_size=ev.batch_size))
    assert [g.token_ids for g in whole] == [g.token_ids for g in dropped], "dropping finished rows changed a row"
    lengths = [g.num_tokens for g in dropped]
    rows["generation"] = {"before_s": whole_s, "after_s": dropped_s, "speedup": whole_s / dropped_s,
                          "tokens_mean": float(np.mean(lengths)), "cut": sum(not g.finished for g in dropped)}

    policy, _ = load_causal_lm("smollm2-135m-instruct")[:2]
    torch.manual_seed(0)
    with torch.no_grad():
        for w in policy.parameters():
            w.add_(0.02 * w.std() * torch.randn_like(w))
    texts = [g.text for g in dropped]
    ids = [g.token_ids or [] for g in dropped]
    b = ev.batch_size

    def old():
        k1 = [float((lp - lq).mean()) for lp, lq in zip(_old_logprobs(policy, tok, asked, texts, b),
                                                        _old_logprobs(base, tok, asked, texts, b))]
        return _old_exact(policy, base, tok, asked, ids, ev.temperature, b), k1

    def new():  # the evaluation's call: the forward passes' own batch (16 sequences), not the generation batch
        return exact_kl_of_responses(lambda: contextlib.nullcontext(policy), lambda: contextlib.nullcontext(base),
                                     tok, asked, ids, temperature=ev.temperature, with_k1=True)

    _old_exact(policy, base, tok, asked[:2], ids[:2], ev.temperature, b)  # warm-up

    (old_exact, old_k1), old_s = timed(old)
    (sums, counts, k1), new_s = timed(new)
    kl_old, kl_new = sum(old_exact[0]) / sum(old_exact[1]), sum(sums) / sum(counts)
    assert abs(kl_old - kl_new) < 1e-4 and old_exact[1] == counts, (kl_old, kl_new)
    rows["kl_passes"] = {"before_s": old_s, "after_s": new_s, "speedup": old_s / new_s, "exact_kl_before": kl_old,
                         "exact_kl_after": kl_new, "k1_before_T1_retokenised": float(np.mean(old_k1)),
                         "k1_after": sum(k1) / sum(counts), "batch_before": b, "batch_after": 16}

    rm_path = args.reward_model or (str(CHECKPOINTS_DIR / "reward") if (CHECKPOINTS_DIR / "reward").is_dir() else None)
    if rm_path:
        rm, rtok = load_reward_model(rm_path)

        def prompt_order():
            out = []
            with torch.no_grad():
                for s in range(0, len(asked), b):
                    seqs = [encode_for_reward(rtok, q, r) for q, r in zip(asked[s:s + b], texts[s:s + b])]
                    out += reward_forward(rm, *left_pad(seqs, rtok.pad_token_id)).tolist()
            return out

        score_responses(rm, rtok, asked[:2], texts[:2])  # warm-up
        before, before_s = timed(prompt_order)
        after, after_s = timed(lambda: score_responses(rm, rtok, asked, texts))
        assert np.allclose(before, after, atol=1e-4)
        rows["scoring"] = {"before_s": before_s, "after_s": after_s, "speedup": before_s / after_s,
                           "reward_model": Path(rm_path).name, "batch_before": b, "batch_after": 16}

    record = {"benchmark": "evaluation passes, before/after (same results)", "prompts": len(asked),
              "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(), "rows": rows,
              "machine": machine(), "command": command()}
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
