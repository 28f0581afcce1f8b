"""Chat decoding on a CPU without native bf16: the weight formats the engine can read, their speed and their cost.

`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_decode_cpu.py [--prompts 16] [--tokens 64]`

Run it as is on an AVX2 laptop; on a newer host the two variables emulate one (the lab's precision choice then sees
no bf16, so the model is held in fp32, as it is there).
Speed: batch 1 and batch 8, greedy, 64 new tokens, median of 3 runs after a warm-up: transformers generate() in the
model's dtype (the baseline), the decode engine on the model's own weights, with fp16 weights (steps of at most
FP16_MAX_ROWS rows), with int8 projections and LM head, and with int8 projections but the LM head kept
(`use_decode_weights(model, "fp16" | "int8" | "int8-proj")`); each with the fraction of the bandwidth limit of the
bytes that format reads per token.
Cost: exact next-token KL(engine on the model's weights ‖ the variant) per token, Σ_v p log p/q at temperature 1,
over the responses the unquantised engine samples from held-out demo prompts (the trainers' sampling: temperature
alone), both teacher-forced through their KV caches (rlhflab.generation.engine.engine_logits), with a 95 % bootstrap
interval over responses, and how often their top-1 tokens agree. The adoption bar (issue 27): KL <= 0.002 nats/token
and top-1 agreement >= 98 %.
"""
from __future__ import annotations

import argparse
import json

from bench_generation import _decode_rate, linear_weight_bytes, memory_bandwidth_gb_s
from common import command, machine

# variant -> the decode weights it asks for (rlhflab.generation.engine.use_decode_weights)
VARIANTS = {"engine": None, "fp16": "fp16", "int8": "int8", "int8-proj": "int8-proj"}


def _weight_bytes(model, variant: str) -> int:
    if variant == "engine":
        return linear_weight_bytes(model)
    if variant == "fp16":
        return linear_weight_bytes(model, bytes_per_weight=2)
    everything_int8 = linear_weight_bytes(model, bytes_per_weight=1, bytes_per_row=4)  # int8 weights, fp32 row scales
    if variant == "int8":
        return everything_int8
    head = model.get_output_embeddings().weight
    return everything_int8 - head.numel() - 4 * head.shape[0] + head.numel() * head.element_size()


def run(prompts: int = 16, tokens: int = 64, model_name: str = "smollm2-135m-instruct", speed_part: bool = True,
        cost_part: bool = True) -> dict:
    import torch

    from rlhflab.config import DEMO_DATA_DIR
    from rlhflab.data.oasst1 import load_prompts
    from rlhflab.generation.engine import decode_engine, engine_logits, use_decode_weights
    from rlhflab.generation.sampling import GenerationSettings, decode_batch, encode_prompts, generate_batch
    from rlhflab.measure.kl import kl_sums
    from rlhflab.measure.stats import ratio_bootstrap_ci
    from rlhflab.models.hardware import vector_features
    from rlhflab.models.loading import load_causal_lm
    from rlhflab.models.precision import policy_dtype

    dtype = policy_dtype(True)
    model, tok = load_causal_lm(model_name, dtype=dtype)
    model.eval()
    bw = memory_bandwidth_gb_s()
    greedy = GenerationSettings(greedy=True, max_new_tokens=64, repetition_penalty=1.0)
    story = "Write a long story about a lighthouse keeper and her dog."
    speed = {}
    for batch_size in (1, 8) if speed_part else ():
        batch, _ = encode_prompts(tok, [story] * batch_size, 512)

        def generate():
            out = model.generate(**batch, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            return (out.shape[1] - batch["input_ids"].shape[1]) * batch_size

        def engine():
            return batch_size * sum(1 for _ in decode_batch(model, batch["input_ids"], batch["attention_mask"], greedy,
                                                            stop_ids=[], pad_id=tok.pad_token_id))

        rows = {"generate": _decode_rate(generate, 64)}
        for variant, fmt in VARIANTS.items():
            use_decode_weights(model, fmt)
            if fmt is not None and decode_engine(model).kind != f"llama-{fmt}":
                continue  # this CPU or torch build has no kernel for it
            rows[variant] = _decode_rate(engine, 64)
            rows[variant + "_kind"] = decode_engine(model).kind
            limit = bw * 1e9 / _weight_bytes(model, variant) * batch_size
            rows[variant + "_fraction_of_limit"] = rows[variant] / limit
            rows[variant + "_over_generate"] = rows[variant] / rows["generate"]
        use_decode_weights(model, None)
        speed[f"batch_{batch_size}_tok_s"] = rows
        print(f"batch {batch_size}: " + json.dumps(rows), flush=True)

    texts = load_prompts(str(DEMO_DATA_DIR / "oasst1.jsonl"), "en")[-prompts:]
    sampling = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=tokens)
    reference = generate_batch(model, tok, texts, sampling, batch_size=8) if cost_part else []
    quality = {}
    for variant, fmt in VARIANTS.items() if cost_part else ():
        use_decode_weights(model, fmt)
        if fmt is None or decode_engine(model).kind != f"llama-{fmt}":
            continue
        per_response, agree, positions = [], 0, 0
        for text, gen in zip(texts, reference):
            prompt, _ = encode_prompts(tok, [text], 512)
            response = torch.tensor([gen.token_ids or [tok.eos_token_id]])
            ids = torch.cat([prompt["input_ids"], response], 1)
            mask = torch.ones_like(ids)
            context = prompt["input_ids"].shape[1]
            use_decode_weights(model, None)
            p = engine_logits(model, ids, mask, context)
            use_decode_weights(model, fmt)
            q = engine_logits(model, ids, mask, context)
            use_decode_weights(model, None)
            ones = torch.ones_like(response, dtype=torch.bool)
            sums = kl_sums(p, q, response, ones)
            per_response.append((float(sums[0]), float(sums[3])))
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            positions += response.shape[1]
        kl = ratio_bootstrap_ci([a for a, _ in per_response], [n for _, n in per_response])
        quality[variant] = {"kl_exact_per_token": kl[0], "kl_ci": [kl[1], kl[2]], "top1_agreement": agree / positions,
                            "tokens": positions, "meets_bar": kl[0] <= 0.002 and agree / positions >= 0.98}
        print(f"{variant}: " + json.dumps(quality[variant]), flush=True)
    result = {"benchmark": "decode without native bf16", "model_dtype": str(dtype).removeprefix("torch."),
              "vector_features": vector_features(), "bandwidth_gb_s": bw, "speed": speed,
              "quality": {"prompts": len(texts), "max_new_tokens": tokens, "temperature": 1.0, **quality},
              "machine": machine(), "command": command()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sampled response (cost part)")
    parser.add_argument("--part", choices=("both", "speed", "cost"), default="both",
                        help="speed needs a quiet machine; the cost (KL, top-1) does not depend on the load")
    a = parser.parse_args()
    run(a.prompts, a.tokens, speed_part=a.part != "cost", cost_part=a.part != "speed")
