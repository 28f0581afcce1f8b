"""Weight-only int8 decoding (rlhflab.generation.engine.use_int8_decode) against the app's bf16 path: speed and its cost.

`python bench/bench_int8.py [--prompts 48] [--tokens 96] [--reward-model checkpoints/reward]`

Speed: chat decode at batch 1, greedy, 64 new tokens, on one prompt: generate() bf16 (the baseline), the decode engine
with packed bf16 weights (the app's default) and with int8 weights; median of 3 runs after a warm-up, the three paths
measured in the same process one after the other.
Quality, on held-out demo prompts:
1. Exact next-token KL(bf16 ‖ int8) per token, Σ_v p log p/q at the app's default temperature, over the responses the
   bf16 engine samples (≥ 1,000 tokens), both engines teacher-forced on the same tokens through their KV caches
   (rlhflab.generation.engine_logits); how often their top-1 tokens agree.
2. The reward model's score of each path's own sampled responses (app default settings, same seed), paired by prompt:
   int8 − bf16 with a 95 % bootstrap interval.
"""
from __future__ import annotations

import argparse
import json
import time

from bench_generation import _decode_rate, linear_weight_bytes, memory_bandwidth_gb_s
from common import command, machine


def run(prompts: int = 48, tokens: int = 96, reward_model: str | None = None,
        model_name: str = "smollm2-135m-instruct") -> dict:
    import torch

    from rlhflab.config import CHECKPOINTS_DIR, DEMO_DATA_DIR
    from rlhflab.data.oasst1 import load_prompts
    from rlhflab.generation.engine import decode_engine, engine_logits, int8_available, use_int8_decode
    from rlhflab.generation.sampling import GenerationSettings, decode_tokens, encode_prompts, generate_batch
    from rlhflab.measure.kl import response_batch, kl_sums
    from rlhflab.measure.scoring import score_responses
    from rlhflab.measure.stats import paired_bootstrap_diff
    from rlhflab.models.loading import load_causal_lm, load_reward_model
    from rlhflab.models.precision import policy_dtype

    if not int8_available():
        return {"benchmark": "int8 decode", "note": "this torch build has no weight-only int8 kernel"}
    dtype = policy_dtype(True)
    model, tok = load_causal_lm(model_name, dtype=dtype)
    model.eval()

    # ---- speed, batch 1
    greedy = GenerationSettings(greedy=True, max_new_tokens=64, repetition_penalty=1.0)
    one, _ = encode_prompts(tok, ["Write a long story about a lighthouse keeper and her dog."], 512)

    def engine():
        return sum(1 for _ in decode_tokens(model, one["input_ids"], greedy, stop_ids=[]))

    def generate():
        out = model.generate(**one, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        return out.shape[1] - one["input_ids"].shape[1]

    generate_tok_s = _decode_rate(generate, 64)
    use_int8_decode(model, False)
    bf16_kind = decode_engine(model).kind
    bf16_tok_s = _decode_rate(engine, 64)
    use_int8_decode(model)
    int8_kind = decode_engine(model).kind
    int8_tok_s = _decode_rate(engine, 64)
    bw = memory_bandwidth_gb_s()
    int8_bytes = linear_weight_bytes(model, bytes_per_weight=1, bytes_per_row=2)  # int8 weights, bf16 row scales
    same_greedy = list(decode_tokens(model, one["input_ids"], greedy, []))
    use_int8_decode(model, False)
    same_greedy = same_greedy == list(decode_tokens(model, one["input_ids"], greedy, []))

    # ---- quality
    # the end of the file, away from the speed prompt
    texts = load_prompts(str(DEMO_DATA_DIR / "oasst1.jsonl"), "en")[-prompts:]
    app = GenerationSettings(max_new_tokens=tokens)  # the app's default sampling settings
    t0 = time.perf_counter()
    bf16_out = generate_batch(model, tok, texts, app, batch_size=16)
    response_ids = [g.token_ids or [] for g in bf16_out]
    ids, mask, resp_mask, context = response_batch(tok, texts, response_ids, 512)
    p_logits = engine_logits(model, ids, mask, context) / app.temperature
    use_int8_decode(model)
    q_logits = engine_logits(model, ids, mask, context) / app.temperature
    int8_out = generate_batch(model, tok, texts, app, batch_size=16)
    use_int8_decode(model, False)
    response = ids[:, context:]
    m = resp_mask.bool()
    per_row = [kl_sums(p_logits[i:i + 1], q_logits[i:i + 1], response[i:i + 1], m[i:i + 1]) for i in range(len(texts))]
    sums = torch.stack(per_row).sum(0)
    from rlhflab.measure.stats import ratio_bootstrap_ci

    kl = ratio_bootstrap_ci([float(r[0]) for r in per_row], [float(r[3]) for r in per_row])
    top1 = (p_logits.argmax(-1) == q_logits.argmax(-1))[m].float().mean().item()

    reward, reward_tok = load_reward_model(reward_model or str(CHECKPOINTS_DIR / "reward"))
    s_bf16 = score_responses(reward, reward_tok, texts, [g.text for g in bf16_out])
    s_int8 = score_responses(reward, reward_tok, texts, [g.text for g in int8_out])
    diff = paired_bootstrap_diff(s_int8, s_bf16)
    identical = sum(a.text == b.text for a, b in zip(bf16_out, int8_out))
    result = {
        "benchmark": "int8 weight-only decode vs the app's bf16 path",
        "speed": {"baseline": f"transformers generate(), {str(dtype).removeprefix('torch.')}, batch 1, greedy",
                  "generate_tok_s": generate_tok_s, "bf16_engine": bf16_kind, "bf16_tok_s": bf16_tok_s,
                  "int8_engine": int8_kind, "int8_tok_s": int8_tok_s,
                  "int8_over_generate": int8_tok_s / generate_tok_s, "int8_over_bf16_engine": int8_tok_s / bf16_tok_s,
                  "int8_bytes_per_token_mb": int8_bytes / 1e6, "bandwidth_gb_s": bw,
                  "int8_fraction_of_limit": int8_tok_s / (bw * 1e9 / int8_bytes),
                  "greedy_64_tokens_identical_to_bf16": same_greedy},
        "quality": {"prompts": len(texts), "tokens": int(sums[3]), "temperature": app.temperature,
                    "kl_exact_bf16_int8_per_token": kl[0], "kl_ci": [kl[1], kl[2]], "top1_agreement": top1,
                    "reward_model": reward_model or str(CHECKPOINTS_DIR / "reward"),
                    "reward_bf16_mean": float(sum(s_bf16) / len(s_bf16)),
                    "reward_int8_mean": float(sum(s_int8) / len(s_int8)),
                    "reward_diff_int8_minus_bf16": diff[0], "reward_diff_ci": [diff[1], diff[2]],
                    "identical_sampled_responses": identical, "seconds": time.perf_counter() - t0},
        "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per sampled response (quality part)")
    parser.add_argument("--reward-model", default=None, help="default: checkpoints/reward (make demo builds it)")
    a = parser.parse_args()
    run(a.prompts, a.tokens, a.reward_model)
