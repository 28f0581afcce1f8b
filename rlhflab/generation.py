"""Text generation: validated settings, batched generation (left padding), and token streaming."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from rlhflab.errors import UserError
from rlhflab.models import format_prompt

# (min, max) of every numeric setting; the app's sliders and the API use the same bounds.
SETTING_BOUNDS = {
    "temperature": (0.05, 2.0),
    "top_k": (0, 200),
    "top_p": (0.05, 1.0),
    "repetition_penalty": (1.0, 2.0),
    "no_repeat_ngram_size": (0, 10),
    "max_new_tokens": (1, 512),
    "seed": (0, 2**31 - 1),
    "best_of_n": (1, 8),
}


@dataclass
class GenerationSettings:
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 128
    seed: int = 0
    greedy: bool = False
    best_of_n: int = 1

    def validate(self) -> "GenerationSettings":
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "greedy":
                if not isinstance(value, bool):
                    raise UserError(f"setting greedy must be true or false, got {value!r}.")
                continue
            lo, hi = SETTING_BOUNDS[f.name]
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise UserError(f"setting {f.name} must be a number, got {value!r}.") from None
            if not (lo <= number <= hi) or number != number:
                raise UserError(f"setting {f.name}={value} is out of range; allowed {lo} to {hi}.")
            if f.type in ("int", int):
                if number != int(number):
                    raise UserError(f"setting {f.name} must be a whole number, got {value}.")
                setattr(self, f.name, int(number))
            else:
                setattr(self, f.name, float(number))
        return self

    def generate_kwargs(self) -> dict:
        kw = dict(max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty)
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.greedy:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kw.update(do_sample=True, temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p)
        return kw

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_token_limit(tokenizer, model, max_new_tokens: int, cap: int = 1024) -> int:
    ctx = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 2048)
    return max(16, min(cap, ctx - max_new_tokens))


def encode_prompts(tokenizer, prompts: list, max_prompt_tokens: int):
    """Left-padded batch of formatted prompts, truncated from the left; also which were truncated."""
    texts = [format_prompt(tokenizer, p) for p in prompts]
    full = tokenizer(texts, add_special_tokens=False)["input_ids"]
    truncated = [len(ids) > max_prompt_tokens for ids in full]
    batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True,
                      truncation=True, max_length=max_prompt_tokens)
    return batch, truncated


@dataclass
class Generation:
    text: str
    num_tokens: int
    prompt_truncated: bool = False
    finished: bool = True
    token_ids: list[int] | None = None  # the response as generated, its end-of-turn token included when it stopped


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list, settings: GenerationSettings, batch_size: int = 16,
                   max_prompt_tokens: int | None = None, progress=None) -> list[Generation]:
    """Responses to `prompts` (strings or chat histories), batched with left padding.

    Sampling is seeded once per call, so the same settings give the same outputs.
    """
    settings.validate()
    device = next(model.parameters()).device
    limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
    torch.manual_seed(settings.seed)
    eos_ids = _stop_ids(tokenizer, model)
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch, truncated = encode_prompts(tokenizer, chunk, limit)
        batch = {k: v.to(device) for k, v in batch.items()}
        seqs = model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=eos_ids)
        responses = seqs[:, batch["input_ids"].shape[1]:]
        for row, was_truncated in zip(responses, truncated):
            ids = row.tolist()
            finished, generated = False, ids
            for i, t in enumerate(ids):
                if t in eos_ids:
                    ids, generated, finished = ids[:i], ids[:i + 1], True
                    break
            ids = [t for t in ids if t != tokenizer.pad_token_id]
            generated = [t for t in generated if t != tokenizer.pad_token_id or t in eos_ids]
            out.append(Generation(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids),
                                  was_truncated, finished, generated))
        if progress is not None:
            progress(len(chunk))
    return out


def _stop_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


def logits_processors(settings: GenerationSettings):
    """The same processing `generate()` applies for these settings (transformers' public processors)."""
    from transformers import (LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if not settings.greedy:
        procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(settings.top_p))
    return procs


@torch.inference_mode()
def decode_tokens(model, input_ids: torch.Tensor, settings: GenerationSettings, stop_ids: list[int]):
    """Yield new token ids one at a time for a single prompt (batch 1), with a KV cache.

    A lean loop over model.forward: at batch 1 on a CPU, generate()'s per-token bookkeeping
    and the streamer thread are a measurable share of the time (see BENCHMARKS.md).
    """
    from transformers import DynamicCache

    procs = logits_processors(settings)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    device = next(model.parameters()).device
    seq = input_ids.to(device)
    cache = DynamicCache(config=getattr(model, "config", None))
    logits = model(input_ids=seq, past_key_values=cache, use_cache=True).logits[:, -1, :]
    for _ in range(settings.max_new_tokens):
        scores = procs(seq, logits.float())
        if settings.greedy:
            token = scores.argmax(-1, keepdim=True)
        else:
            token = torch.multinomial(torch.softmax(scores, -1).cpu(), 1, generator=generator).to(device)
        tid = int(token)
        if tid in stop_ids:
            return
        yield tid
        seq = torch.cat([seq, token], dim=1)
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1, :]


def stream_generate(model, tokenizer, prompt, settings: GenerationSettings, max_prompt_tokens: int | None = None):
    """Yield the response text so far as tokens arrive (one prompt or chat history).

    The generator's return value (StopIteration.value) is the final `Generation`, which says
    whether the prompt had to be truncated to fit the model's context.
    """
    settings.validate()
    limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
    batch, truncated = encode_prompts(tokenizer, [prompt], limit)
    ids: list[int] = []
    text = ""
    for tid in decode_tokens(model, batch["input_ids"], settings, _stop_ids(tokenizer, model)):
        ids.append(tid)
        new_text = tokenizer.decode(ids, skip_special_tokens=True)
        if new_text != text and not new_text.endswith("\ufffd"):  # wait for complete UTF-8 characters
            text = new_text
            yield text
    return Generation(text.strip(), len(ids), truncated[0], len(ids) < settings.max_new_tokens)
