"""Text generation: validated settings, batched generation (left padding), and token streaming."""
from __future__ import annotations

import threading
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
            finished = False
            for i, t in enumerate(ids):
                if t in eos_ids:
                    ids, finished = ids[:i], True
                    break
            ids = [t for t in ids if t != tokenizer.pad_token_id]
            out.append(Generation(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids),
                                  was_truncated, finished))
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


def stream_generate(model, tokenizer, prompt, settings: GenerationSettings, max_prompt_tokens: int | None = None):
    """Yield the response text so far as tokens arrive (one prompt or chat history).

    The first item is a `Generation` header-free string; `prompt_truncated` is reported through
    the final `Generation` returned by StopIteration.value.
    """
    from transformers import TextIteratorStreamer

    settings.validate()
    device = next(model.parameters()).device
    limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
    batch, truncated = encode_prompts(tokenizer, [prompt], limit)
    batch = {k: v.to(device) for k, v in batch.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    generator = torch.Generator().manual_seed(settings.seed)
    result: dict = {}

    def run():
        try:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            with torch.no_grad():
                result["seqs"] = model.generate(**batch, **settings.generate_kwargs(), streamer=streamer,
                                                pad_token_id=tokenizer.pad_token_id,
                                                eos_token_id=_stop_ids(tokenizer, model))
        except Exception as exc:  # surface in the consumer, never kill the worker silently
            result["error"] = exc
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if "error" in result:
        raise result["error"]
    n_tokens = int(result["seqs"].shape[1] - batch["input_ids"].shape[1])
    return Generation(text.strip(), n_tokens, truncated[0], True)
