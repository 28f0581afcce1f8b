"""The sampling API: validated settings, batched generation (left padding), rollouts and token streaming."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from rlhflab.errors import UserError
from rlhflab.generation.engine import start_decode
from rlhflab.models.prompts import format_prompt

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


def _generation(tokenizer, ids: list[int], eos_ids, pad_id, was_truncated: bool) -> Generation:
    finished, generated = False, ids
    for i, t in enumerate(ids):
        if t in eos_ids:
            ids, generated, finished = ids[:i], ids[:i + 1], True
            break
    ids = [t for t in ids if t != pad_id]
    generated = [t for t in generated if t != pad_id or t in eos_ids]
    return Generation(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), was_truncated, finished,
                      generated)


def _served_batch(server, tokenizer, model, prompts: list, settings: GenerationSettings, limit: int,
                  adapter: str | None) -> list[Generation]:
    """generate_batch through a decode loop (rlhflab.generation.server): identical prompts (best-of-n) go as one
    request of several rows (row i sampled with seed settings.seed + i, the prompt prefilled once), others as
    requests of their own; all run at once in the loop's batch."""
    eos_ids = stop_token_ids(tokenizer, model)
    batch, truncated = encode_prompts(tokenizer, prompts, limit)
    rows = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(batch["input_ids"].tolist(),
                                                                      batch["attention_mask"].tolist())]
    if all(r == rows[0] for r in rows):
        groups = [list(range(i, min(i + server.max_batch, len(rows)))) for i in range(0, len(rows), server.max_batch)]
    else:
        groups = [[i] for i in range(len(rows))]
    requests = [(g, server.submit(rows[g[0]], settings, adapter, eos_ids, n=len(g))) for g in groups]
    out: list[Generation | None] = [None] * len(rows)
    try:
        for g, request in requests:
            got: dict[int, list[int]] = {j: [] for j in range(len(g))}
            for row, token in request.events():
                if token is not None:
                    got[row].append(token)
            for j, i in enumerate(g):
                out[i] = _generation(tokenizer, got[j], eos_ids, None, truncated[i])
    finally:
        for _, request in requests:
            request.cancel() if request.rows_left else None
    return out


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: list, settings: GenerationSettings, batch_size: int = 16,
                   max_prompt_tokens: int | None = None, progress=None, server=None,
                   adapter: str | None = None) -> list[Generation]:
    """Responses to `prompts` (strings or chat histories), batched with left padding, on the decode engine.

    Sampling is seeded once per call, so the same settings give the same outputs; greedy outputs are
    generate()'s token for token (at the model's own precision). With `server` (a DecodeServer of this model),
    the prompts join its running batch instead (with LoRA adapter `adapter`, or none).
    """
    settings.validate()
    if server is not None:
        model = model if model is not None else server.lm
        limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
        out = _served_batch(server, tokenizer, model, prompts, settings, limit, adapter)
        if progress is not None:
            progress(len(prompts))
        return out
    device = next(model.parameters()).device
    limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    eos_ids = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch, truncated = encode_prompts(tokenizer, chunk, limit)
        responses = sample_responses(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                     settings, eos_ids, pad_id, generator=generator).tolist()
        for ids, was_truncated in zip(responses, truncated):
            out.append(_generation(tokenizer, ids, eos_ids, pad_id, was_truncated))
        if progress is not None:
            progress(len(chunk))
    return out


def stop_token_ids(tokenizer, model, chat_end: bool = True) -> list[int]:
    """The tokenizer's EOS and the ids the model's generation config stops at (what generate() stops at), and with
    `chat_end` ChatML's end-of-turn token where the vocabulary has one."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    if chat_end and "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


def logits_processors(settings: GenerationSettings):
    """The same processing `generate()` applies for these settings (transformers' public processors)."""
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

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


def sample_tokens(scores: torch.Tensor, generator: torch.Generator, rows: torch.Tensor | None = None,
                  batch: int | None = None) -> torch.Tensor:
    """One token per row drawn from softmax(scores): argmax of p / E with E = -log U ~ Exponential(1) per entry, an
    exact draw from p (the exponential race), chosen over torch.multinomial and exponential_ because uniform numbers
    and a log cost a fraction of either on a CPU (BENCHMARKS.md, "Lab notes moved out of the code"). U < 1, so
    E > 0; entries with p = 0 are never drawn.

    With `rows` (the batch rows that `scores` are of, out of `batch`), the uniform numbers are drawn for the whole
    batch and each row reads its own: a row draws the same numbers whether or not finished rows were dropped."""
    probs = torch.softmax(scores.float(), -1).cpu()
    if rows is None:
        race = torch.rand(probs.shape, generator=generator)
    else:
        race = torch.rand((batch, probs.shape[-1]), generator=generator)[rows.cpu()]
    return probs.div_(race.log_().neg_()).argmax(-1)


# Drop finished rows from a decoding batch once at most this share of it is still running: each drop copies the
# running rows' KV cache, so dropping by a fixed share bounds the copies to a few per batch, while the steps after
# it skip the finished rows' matmuls and attention (most of an evaluation batch ends well before the token budget).
COMPACT_AT = 0.75


@torch.inference_mode()
def decode_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                 stop_ids: list[int], pad_id: int, generator: torch.Generator | None = None):
    """Yield the next token of every row, (batch,) per step, for a left-padded batch of prompts.

    A row that produced a stop id gets `pad_id` from then on (as generate() pads it); decoding ends when
    every row has stopped or after settings.max_new_tokens steps. Logits go through `logits_processors`. Stopped
    rows leave the decoded batch once at most COMPACT_AT of it still runs; what each row yields does not change.
    """
    procs = logits_processors(settings)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    device = input_ids.device
    state = start_decode(model, attention_mask.to(device), input_ids.shape[1] + settings.max_new_tokens)
    stops = torch.tensor(stop_ids, device=device, dtype=torch.long)
    batch = input_ids.shape[0]
    rows = torch.arange(batch, device=device)  # the batch row of each row still decoded
    running = torch.ones(batch, dtype=torch.bool, device=device)
    seq = input_ids
    logits = state.forward(input_ids)
    for step in range(settings.max_new_tokens):
        scores = procs(seq, logits.float())
        if settings.greedy:
            token = scores.argmax(-1)
        else:
            token = sample_tokens(scores, generator, rows, batch).to(device)
        token = torch.where(running, token, torch.full_like(token, pad_id))
        out = torch.full((batch,), pad_id, dtype=token.dtype, device=device)
        yield out.index_copy_(0, rows, token)
        running = running & ~torch.isin(token, stops)
        left = int(running.sum())
        if not left or step + 1 == settings.max_new_tokens:
            return
        seq = torch.cat([seq, token[:, None]], dim=1)
        if left <= COMPACT_AT * len(rows):
            keep = running.nonzero()[:, 0]
            state.keep_rows(keep)
            rows, running, seq, token = rows[keep], running[keep], seq[keep], token[keep]
        logits = state.forward(token[:, None])


def sample_responses(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                     stop_ids: list[int], pad_id: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The responses (batch, longest response) to a left-padded batch of prompt ids, the whole batch in one decode
    call; `pad_id` after a row's stop token, as generate() pads. The one home of rollouts: chat's best-of-n, the
    evaluation and the PPO/GRPO trainers sample here. The result is an ordinary tensor, not an inference tensor,
    so a trainer may feed it to passes that record gradients."""
    with torch.inference_mode():
        steps = list(decode_batch(model, input_ids, attention_mask, settings, stop_ids, pad_id, generator=generator))
    if not steps:
        return input_ids.new_zeros(input_ids.shape[0], 0)
    with torch.inference_mode(False):
        return torch.stack(steps, 1).clone()


def decode_tokens(model, input_ids: torch.Tensor, settings: GenerationSettings, stop_ids: list[int]):
    """Yield new token ids one at a time for a single prompt (batch 1), on the decode engine."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    for token in decode_batch(model, ids, torch.ones_like(ids), settings, stop_ids, pad_id=-1):
        tid = int(token[0])
        if tid in stop_ids:
            return
        yield tid


def served_tokens(server, input_ids: list[int], settings: GenerationSettings, stop_ids: list[int],
                  adapter: str | None = None):
    """decode_tokens through a decode loop: new token ids one at a time, the stop token left out. Closing this
    generator (a visitor who left) cancels the request, which frees its row at the loop's next step."""
    request = server.submit(input_ids, settings, adapter, stop_ids)
    try:
        for tid in request.tokens():
            if tid in stop_ids:
                return
            yield tid
    finally:
        if request.rows_left:
            request.cancel()


def stream_generate(model, tokenizer, prompt, settings: GenerationSettings, max_prompt_tokens: int | None = None,
                    server=None, adapter: str | None = None):
    """Yield the response text so far as tokens arrive (one prompt or chat history).

    The generator's return value (StopIteration.value) is the final `Generation`, which says
    whether the prompt had to be truncated to fit the model's context. With `server` (a DecodeServer of this
    model; `model` may then be None) the request joins the server's running batch, with LoRA adapter `adapter`
    or none; the server may refuse it at once with a ServerBusy UserError that gives the expected wait.
    """
    settings.validate()
    model = model if model is not None else server.lm
    limit = max_prompt_tokens or prompt_token_limit(tokenizer, model, settings.max_new_tokens)
    batch, truncated = encode_prompts(tokenizer, [prompt], limit)
    stop_ids = stop_token_ids(tokenizer, model)
    if server is not None:
        tokens = served_tokens(server, batch["input_ids"][0].tolist(), settings, stop_ids, adapter)
    else:
        tokens = decode_tokens(model, batch["input_ids"], settings, stop_ids)
    ids: list[int] = []
    text = ""
    try:
        for tid in tokens:
            ids.append(tid)
            new_text = tokenizer.decode(ids, skip_special_tokens=True)
            if new_text != text and not new_text.endswith("\ufffd"):  # wait for complete UTF-8 characters
                text = new_text
                yield text
    finally:
        tokens.close()  # a consumer that left frees the loop's row at once
    return Generation(text.strip(), len(ids), truncated[0], len(ids) < settings.max_new_tokens)
