"""Continuous batching: one background decode loop per loaded model, serving every request as rows of one batch.

A request (prompt ids, GenerationSettings, optional LoRA adapter name, n rows for best-of-n) waits in a bounded
queue, is prefilled in chunks on a cache of its own, and then joins the running batch at the next step; each of
its rows leaves the batch when it stops (a stop token, its max_new_tokens, the context's end) or when its consumer
cancels. Tokens stream back per request through a thread-safe queue as soon as they are sampled.

Every row keeps its own settings and its own torch.Generator (seeded from settings.seed, + i for the i-th of n
rows), and the logits processors run row by row on the row's own token history, so a row's tokens do not depend on
what else is in the batch (up to the batched kernels' rounding, which is nil on the tiny fp32 test models and
measured on the real one: BENCHMARKS.md). Rows with different LoRA adapters on one base share the loop: each row
gets its own adapter's deltas (S-LoRA/Punica style, grouped by adapter), as peft computes them.

The KV cache is slot based: one (max_batch, kv_heads, capacity, head_dim) buffer per layer; the active rows are
slots 0..B-1 (a row that leaves is replaced by the last one, its cache copied), each with its own length, and a
decode step attends over the longest length with a per-row key mask.
"""
from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from rlhflab.errors import UserError
from rlhflab.generation.engine import _apply_lora, _base_linear, decode_engine
from rlhflab.generation.sampling import GenerationSettings, logits_processors, sample_tokens

DEFAULT_MAX_BATCH = 32  # rows decoded together: tokens/s still rose from 16 to 32 rows (bench/serving.json)
DEFAULT_MAX_QUEUE = 64  # rows waiting beyond the batch; more are turned away with the expected wait
# Prompt tokens prefilled per step: a long prompt delays the others by one chunk a step. With 10 rows decoding, a
# 450-token prompt's first token came after 1.9 / 0.77 / 0.61 s at 128 / 256 / 512 (this host, shared).
DEFAULT_PREFILL_TOKENS = 256
CACHE_ROUND = 128  # cache capacity grows in steps of this many positions
ABANDONED_AFTER_S = 30.0  # a request whose consumer has not read waiting tokens for this long is cancelled


class ServerBusy(UserError):
    """The queue is full: the message says how long the wait is expected to be."""


class Unsupported(Exception):
    """The loop cannot serve this model or adapter (not a Llama-family model, merged or DoRA adapters): callers use
    the one-at-a-time path instead."""


def serving_supported(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return decode_engine(inner).kind != "transformers"
    except Exception:
        return False


_MODULES = ("q", "k", "v", "o", "gate", "up", "down")


def _module(layer, key):
    attn, mlp = layer.self_attn, layer.mlp
    return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.o_proj, "gate": mlp.gate_proj,
            "up": mlp.up_proj, "down": mlp.down_proj}[key]


def _named_deltas(module, name: str) -> list:
    """[(A, B, scaling)] of adapter `name` on a peft LoRA layer ([] where it has none)."""
    if not hasattr(module, "lora_A"):
        return []
    if getattr(module, "merged", False) or getattr(module, "lora_variant", {}):
        raise Unsupported("merged or variant LoRA layers")
    if name not in module.lora_A:
        return []
    return [(module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name])]


_END = object()


@dataclass
class _Row:
    request: "Request"
    index: int  # which of the request's n rows
    generator: torch.Generator
    history: torch.Tensor  # (1, prompt + generated) ids, what the logits processors read
    length: int  # positions in the cache
    pending: int | None = None  # the last sampled token, fed at the next step
    generated: int = 0
    done: bool = False


class Request:
    """A request's handle: iterate `events()` for (row, token) as they are sampled ((row, None) when a row ends), or
    `tokens()` for one row's token ids; `cancel()` (or closing the iterator) frees its rows at the next step."""

    _ids = itertools.count()

    def __init__(self, server: "DecodeServer", prompt_ids: list[int], settings: GenerationSettings, adapter: str | None,
                 stop_ids, n: int, forced: list[int] | None, record_logits: bool):
        self.id = next(self._ids)
        self.server = server
        self.prompt_ids = list(prompt_ids)
        self.settings = settings
        self.adapter = adapter
        self.stop_ids = set(stop_ids)
        self.n = n
        self.forced = forced
        self.logits: list[torch.Tensor] | None = [] if record_logits else None
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.last_read = self.submitted
        self.cancelled = False
        self.prefilled = 0
        self.cache = None  # (k, v) per layer while prefilling
        self.lora = None  # per-module deltas of the adapter, read at admission
        self.rows_left = n
        self.tokens_out = 0
        self.finish: dict[int, str] = {}  # row -> why it ended ("stop", "length", "cancelled", "error")
        self._out: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.server._wake()

    close = cancel

    def events(self, poll_s: float = 1.0):
        """(row, token id) as sampled, (row, None) when a row ends; returns when every row has ended. Raises the
        loop's error if it failed. Closing the generator early cancels the request."""
        try:
            while True:
                try:
                    item = self._out.get(timeout=poll_s)
                except queue.Empty:
                    if not self.server.alive():
                        raise RuntimeError("the decode loop stopped") from None
                    continue
                self.last_read = time.monotonic()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.rows_left:
                self.cancel()

    def tokens(self):
        """Token ids of a one-row request (its stop token included, as sampled)."""
        for row, token in self.events():
            if token is not None:
                yield token


@dataclass
class ServerStats:
    steps: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    rejected: int = 0
    cancelled: int = 0
    batch_sizes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))  # recent steps
    step_s: float = 0.0
    sample_s: float = 0.0  # of step_s: the per-row logits processors and sampling


class DecodeServer:
    """The decode loop of one model (a Llama-family causal LM, fp32/bf16, packed or not, with any number of peft
    LoRA adapters). Start with `submit`; the loop thread starts on the first request and idles when there is none."""

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE,
                 prefill_tokens: int = DEFAULT_PREFILL_TOKENS, name: str = "model",
                 abandoned_after_s: float = ABANDONED_AFTER_S):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.lm = inner
        self.engine = decode_engine(inner)
        if self.engine.kind == "transformers":
            raise Unsupported(f"{type(inner).__name__} is not a Llama-family model")
        self.core = self.engine.core
        self.config = inner.config
        self.max_positions = getattr(self.config, "max_position_embeddings", 2048)
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, max(1, prefill_tokens)
        self.abandoned_after_s = abandoned_after_s
        self.name = name
        cfg = self.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.cache_dtype = self.engine.dtype or next(inner.parameters()).dtype
        self.device = next(inner.parameters()).device
        # The base projections, captured now: peft wraps modules later (an adapter attached), keeping these as
        # base_layer, and the packed copies are keyed on the base weights.
        self._base = [{key: _base_linear(_module(l, key)) for key in _MODULES} for l in self.core.layers]
        self._head_base = _base_linear(inner.lm_head)
        self.step_lock = threading.RLock()  # held during a step; whoever changes the model's modules takes it
        self._cv = threading.Condition()
        self._waiting: list[Request] = []
        self._prefilling: list[Request] = []
        self._rows: list[_Row] = []
        self._k: list[torch.Tensor] | None = None
        self._v: list[torch.Tensor] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rate = None  # tokens per second of recent steps (EMA), for the expected wait
        self.stats = ServerStats()

    # ------------------------------------------------------------------ public

    def submit(self, prompt_ids: list[int], settings: GenerationSettings, adapter: str | None = None,
               stop_ids=(), n: int = 1, forced: list[int] | None = None, record_logits: bool = False) -> Request:
        """Queue a request of `n` rows (best-of-n: rows i = 0..n-1 sample with seed settings.seed + i). Raises
        ServerBusy (a UserError with the expected wait) when the queue is full, Unsupported for an adapter the loop
        cannot apply. `forced` feeds these tokens instead of sampling and `record_logits` keeps each step's fp32
        logits (to measure a row's logits in a batch against the same row alone)."""
        settings.validate()
        if not 1 <= n <= self.max_batch:
            raise UserError(f"a request may have 1 to {self.max_batch} rows, got {n}.")
        if not prompt_ids:
            raise UserError("the prompt is empty.")
        if len(prompt_ids) + settings.max_new_tokens > self.max_positions:
            raise UserError(f"prompt ({len(prompt_ids)} tokens) plus max new tokens ({settings.max_new_tokens}) "
                            f"exceed the model's context of {self.max_positions} tokens.")
        request = Request(self, prompt_ids, settings, adapter, stop_ids, n, forced, record_logits)
        request.lora = self._adapter_table(adapter) if adapter else None
        with self._cv:
            queued = sum(r.n for r in self._waiting)
            if queued + n > self.max_queue:
                self.stats.rejected += 1
                wait = self.expected_wait_s()
                raise ServerBusy(f"The {self.name} is busy: {queued} answers are queued ahead of yours "
                                 f"(the queue holds {self.max_queue}). Please send your message again in about "
                                 f"{max(5, round(wait / 5) * 5):.0f} s.")
            self._waiting.append(request)
            self._ensure_thread()
            self._cv.notify_all()
        return request

    def supports(self, adapter: str | None) -> bool:
        """Whether the loop can apply this adapter (None, the bare model, always)."""
        if adapter is None:
            return True
        try:
            self._adapter_table(adapter)
            return True
        except Unsupported:
            return False

    def expected_wait_s(self) -> float:
        """Seconds until the queue ahead has been served: tokens still owed over the measured token rate."""
        owed = sum(r.request.settings.max_new_tokens - r.generated for r in list(self._rows))
        owed += sum(r.n * r.settings.max_new_tokens for r in list(self._waiting) + list(self._prefilling))
        rate = self._rate or 20.0
        return owed / rate

    def load(self) -> dict:
        with self._cv:
            return {"rows": len(self._rows), "prefilling": sum(r.n for r in self._prefilling),
                    "waiting": sum(r.n for r in self._waiting)}

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ loop

    def _wake(self):
        with self._cv:
            self._cv.notify_all()

    def _ensure_thread(self):
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, daemon=True, name=f"decode-loop-{self.name}")
            self._thread.start()

    def _loop(self):
        while True:
            with self._cv:
                while not (self._stopping or self._rows or self._waiting or self._prefilling):
                    self._k = self._v = None  # idle: give the cache's memory back
                    self._cv.wait()
                if self._stopping:
                    for r in self._waiting + self._prefilling + list({id(x.request): x.request for x in self._rows}
                                                                     .values()):
                        self._fail(r, RuntimeError("the decode loop was stopped"))
                    self._waiting, self._prefilling, self._rows = [], [], []
                    return
            try:
                t0 = time.perf_counter()
                with self.step_lock, torch.inference_mode():
                    made = self._step()
                dt = time.perf_counter() - t0
                self.stats.step_s += dt
                if made and dt > 0:
                    rate = made / dt
                    self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
            except Exception as exc:  # one failed step fails the requests in it, never the loop
                with self._cv:
                    victims = {id(r.request): r.request for r in self._rows}
                    victims.update({id(r): r for r in self._prefilling})
                    self._rows, self._prefilling = [], []
                    self._k = self._v = None
                for r in victims.values():
                    self._fail(r, exc)

    def _fail(self, request: Request, exc: BaseException):
        request.rows_left = 0
        request._out.put(exc)
        request._out.put(_END)

    def _step(self) -> int:
        """One step: drop cancelled rows, admit waiting requests, prefill one budget of prompt tokens, decode every
        active row once. Returns the number of tokens sampled."""
        now = time.monotonic()
        with self._cv:
            for r in self._waiting + self._prefilling:
                if not r.cancelled and r._out.qsize() and now - r.last_read > self.abandoned_after_s:
                    r.cancel()
            for row in self._rows:
                r = row.request
                if not r.cancelled and r._out.qsize() and now - r.last_read > self.abandoned_after_s:
                    r.cancelled = True
            gone = [r for r in self._waiting + self._prefilling if r.cancelled]
            self._waiting = [r for r in self._waiting if not r.cancelled]
            self._prefilling = [r for r in self._prefilling if not r.cancelled]
        for r in gone:
            self._end_request(r)
        for i in reversed(range(len(self._rows))):
            if self._rows[i].request.cancelled:
                self._leave(i, "cancelled")
        with self._cv:  # admission, first come first served: a request starts when its rows all have slots
            reserved = len(self._rows) + sum(r.n for r in self._prefilling)
            while self._waiting and reserved + self._waiting[0].n <= self.max_batch:
                r = self._waiting.pop(0)
                self._prefilling.append(r)
                reserved += r.n
            prefilling = list(self._prefilling)
        made = 0
        budget = self.prefill_tokens
        for r in prefilling:
            if budget <= 0:
                break
            chunk = min(budget, len(r.prompt_ids) - r.prefilled)
            logits = self._prefill(r, chunk)
            budget -= chunk
            self.stats.prefill_tokens += chunk
            if logits is not None:
                with self._cv:
                    self._prefilling.remove(r)
                made += self._join(r, logits)
        if self._rows:
            made += self._decode()
        self.stats.steps += 1
        self.stats.tokens += made
        return made

    def _end_request(self, r: Request):
        if r.rows_left:
            for i in range(r.n):
                r.finish.setdefault(i, "cancelled")
            r.rows_left = 0
            self.stats.cancelled += 1
            r._out.put(_END)
        r.cache = None

    # ------------------------------------------------------------------ rows and the slot cache

    def _ensure_cache(self, needed: int):
        if self._k is None:
            cap = -(-needed // CACHE_ROUND) * CACHE_ROUND
            shape = (self.max_batch, self.kv_heads, cap, self.head_dim)
            self._k = [torch.zeros(shape, dtype=self.cache_dtype, device=self.device) for _ in self.core.layers]
            self._v = [torch.zeros(shape, dtype=self.cache_dtype, device=self.device) for _ in self.core.layers]
        elif self._k[0].shape[2] < needed:
            cap = -(-needed // CACHE_ROUND) * CACHE_ROUND
            n = len(self._rows)
            used = max((r.length for r in self._rows), default=0)

            def grow(t):
                bigger = t.new_zeros(self.max_batch, self.kv_heads, cap, self.head_dim)
                bigger[:n, :, :used] = t[:n, :, :used]
                return bigger

            self._k = [grow(t) for t in self._k]
            self._v = [grow(t) for t in self._v]

    def _join(self, r: Request, logits: torch.Tensor) -> int:
        """The prefilled request's rows take the next free slots (its cache copied in) and sample their first
        token."""
        plen = len(r.prompt_ids)
        self._ensure_cache(plen + 1)
        history = torch.tensor([r.prompt_ids], dtype=torch.long, device=self.device)
        rows = []
        for i in range(r.n):
            slot = len(self._rows)
            for layer, (k, v) in enumerate(zip(*r.cache)):
                self._k[layer][slot, :, :plen] = k[0]
                self._v[layer][slot, :, :plen] = v[0]
            gen = torch.Generator(device="cpu").manual_seed(r.settings.seed + i)
            row = _Row(r, i, gen, history, plen)
            self._rows.append(row)
            rows.append(row)
        r.cache = None
        self._sample(rows, logits.expand(len(rows), -1))
        self._retire()
        return len(rows)

    def _leave(self, i: int, why: str):
        """Row i leaves: the last row moves into its slot."""
        row = self._rows[i]
        r = row.request
        if not row.done:
            row.done = True
            r.finish[row.index] = why
            r._out.put((row.index, None))
            r.rows_left -= 1
            if r.rows_left == 0:
                r._out.put(_END)
                self.stats.cancelled += why == "cancelled"
        last = len(self._rows) - 1
        if i != last:
            moved = self._rows[last]
            n = moved.length
            for layer in range(len(self._k)):
                self._k[layer][i, :, :n] = self._k[layer][last, :, :n]
                self._v[layer][i, :, :n] = self._v[layer][last, :, :n]
            self._rows[i] = moved
        self._rows.pop()

    def _retire(self):
        for i in reversed(range(len(self._rows))):
            if self._rows[i].done:
                self._leave(i, self._rows[i].request.finish.get(self._rows[i].index, "stop"))

    def _sample(self, rows: list[_Row], logits: torch.Tensor):
        """Each row's next token from its own logits processors and generator; emitted at once."""
        t0 = time.perf_counter()
        self._sample_rows(rows, logits)
        self.stats.sample_s += time.perf_counter() - t0

    def _sample_rows(self, rows: list[_Row], logits: torch.Tensor):
        logits = logits.float()
        for j, row in enumerate(rows):
            r, s = row.request, row.request.settings
            scores = logits[j:j + 1]
            if r.logits is not None and row.index == 0:
                r.logits.append(scores[0].clone())
            if r.forced is not None and row.generated < len(r.forced):
                token = r.forced[row.generated]
            else:
                token = next_token(s, row.history, scores, row.generator)
            row.generated += 1
            row.pending = token
            row.history = torch.cat([row.history, row.history.new_tensor([[token]])], 1)
            r.tokens_out += 1
            if r.first_token_at is None:
                r.first_token_at = time.monotonic()
            r._out.put((row.index, token))
            why = None
            if token in r.stop_ids:
                why = "stop"
            elif row.generated >= s.max_new_tokens or (r.forced is not None and row.generated >= len(r.forced)):
                why = "length"
            elif row.length + 1 >= self.max_positions:
                why = "length"
            if why:
                row.done = True
                r.finish[row.index] = why
                r._out.put((row.index, None))
                r.rows_left -= 1
                if r.rows_left == 0:
                    r._out.put(_END)

    # ------------------------------------------------------------------ the forward passes

    def _adapter_table(self, name: str) -> dict:
        try:
            table = {(i, key): _named_deltas(_module(l, key), name)
                     for i, l in enumerate(self.core.layers) for key in _MODULES}
            table["head"] = _named_deltas(self.lm.lm_head, name)
        except Unsupported:
            raise
        if not any(table.values()):
            raise Unsupported(f"no LoRA adapter named {name!r} on this model")
        return table

    def _prefill(self, r: Request, chunk: int) -> torch.Tensor | None:
        """Feed the next `chunk` prompt tokens of a request on its own batch-1 cache; the last position's logits once
        the whole prompt is in."""
        plen = len(r.prompt_ids)
        if r.cache is None:
            shape = (1, self.kv_heads, plen, self.head_dim)
            r.cache = ([torch.zeros(shape, dtype=self.cache_dtype, device=self.device) for _ in self.core.layers],
                       [torch.zeros(shape, dtype=self.cache_dtype, device=self.device) for _ in self.core.layers])
        start, end = r.prefilled, r.prefilled + chunk
        tokens = torch.tensor([r.prompt_ids[start:end]], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        groups = [(r.lora, None)] if r.lora else []
        if start == 0:
            mask = None  # causal from the start: SDPA's is_causal, as transformers runs it
        else:
            q = torch.arange(start, end, device=self.device)[:, None]
            mask = (torch.arange(end, device=self.device)[None] <= q)[None, None]
        ks, vs = r.cache
        logits = self._forward(tokens, positions, groups, mask, causal=start == 0,
                               write=lambda i, k, v: (ks[i][:, :, start:end].copy_(k), vs[i][:, :, start:end].copy_(v)),
                               read=lambda i: (ks[i][:, :, :end], vs[i][:, :, :end]))
        r.prefilled = end
        return logits if end == plen else None

    def _decode(self) -> int:
        rows = [row for row in self._rows if not row.done]
        assert len(rows) == len(self._rows)
        b = len(rows)
        lens = torch.tensor([row.length for row in rows], device=self.device)
        longest = int(lens.max()) + 1
        self._ensure_cache(longest)
        tokens = torch.tensor([[row.pending] for row in rows], dtype=torch.long, device=self.device)
        slots = torch.arange(b, device=self.device)
        same = bool((lens == lens[0]).all())
        mask = None if same else (torch.arange(longest, device=self.device)[None] <= lens[:, None])[:, None, None]
        groups = self._groups(rows)

        def write(i, k, v):
            self._k[i][slots, :, lens] = k[:, :, 0]
            self._v[i][slots, :, lens] = v[:, :, 0]

        logits = self._forward(tokens, lens[:, None], groups, mask, causal=False, write=write,
                               read=lambda i: (self._k[i][:b, :, :longest], self._v[i][:b, :, :longest]))
        for row in rows:
            row.length += 1
        self.stats.batch_sizes.append(b)
        self._sample(rows, logits)
        self._retire()
        return b

    def _groups(self, rows: list[_Row]) -> list:
        """[(adapter table, row indices or None for every row)] for the adapters in this batch."""
        by_adapter: dict = {}
        for j, row in enumerate(rows):
            if row.request.lora is not None:
                by_adapter.setdefault(row.request.adapter, (row.request.lora, []))[1].append(j)
        out = []
        for table, idx in by_adapter.values():
            out.append((table, None if len(idx) == len(rows) else torch.tensor(idx, device=self.device)))
        return out

    def _forward(self, tokens, position_ids, groups, mask, causal, write, read) -> torch.Tensor:
        if self.engine.dtype is None:
            return self._forward_step(tokens, position_ids, groups, mask, causal, write, read)
        with torch.autocast(self.device.type, enabled=False):
            return self._forward_step(tokens, position_ids, groups, mask, causal, write, read)

    def _forward_step(self, tokens, position_ids, groups, mask, causal, write, read) -> torch.Tensor:
        """The engine's Llama step (rlhflab.generation.engine._DecodeState._llama_step) over the given cache, with
        per-row LoRA deltas. Logits (batch, vocab) at the last position."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        F = torch.nn.functional
        engine, core = self.engine, self.core
        batch, new = tokens.shape
        dt = engine.dtype
        cast = (lambda t: t.to(dt)) if dt is not None else (lambda t: t)
        heads, kv_heads, d = self.heads, self.kv_heads, self.head_dim

        def lora(result, x, key):
            for table, idx in groups:
                deltas = table[key]
                if not deltas:
                    continue
                if idx is None:
                    result = _apply_lora(result, x, deltas)
                else:
                    result[idx] = _apply_lora(result[idx], x[idx], deltas)
            return result

        h = core.embed_tokens(tokens)
        cos, sin = core.rotary_emb(cast(h), position_ids)
        for i, layer in enumerate(core.layers):
            attn, packed, base = layer.self_attn, engine._packed and engine._packed[i], self._base[i]
            x = cast(layer.input_layernorm(h))
            if packed:
                q, k, v = packed[0](x)
            else:
                q, k, v = base["q"](x), base["k"](x), base["v"](x)
            q, k, v = lora(q, x, (i, "q")), lora(k, x, (i, "k")), lora(v, x, (i, "v"))
            q = q.view(batch, new, heads, d).transpose(1, 2)
            k = k.view(batch, new, kv_heads, d).transpose(1, 2)
            v = v.view(batch, new, kv_heads, d).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            write(i, k, v)
            keys, values = read(i)
            # GQA inside the kernel, with or without the key mask: the same numbers as repeated heads (bit for bit,
            # checked on this host in fp32 and bf16) without copying the keys and values 3 times per layer and step
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None and causal
                                               and new > 1, scale=attn.scaling, enable_gqa=heads != kv_heads)
            o = o.transpose(1, 2).reshape(batch, new, heads * d)
            o = lora(packed[1](o)[0] if packed else base["o"](o), o, (i, "o"))
            h = h + o
            x = cast(layer.post_attention_layernorm(h))
            if packed:
                gate, up = packed[2](x)
            else:
                gate, up = base["gate"](x), base["up"](x)
            gate, up = lora(gate, x, (i, "gate")), lora(up, x, (i, "up"))
            y = layer.mlp.act_fn(gate) * up
            h = h + lora(packed[3](y)[0] if packed else base["down"](y), y, (i, "down"))
        h = cast(core.norm(h[:, -1:, :]))
        out = engine._head(h)[0] if engine._packed is not None else self._head_base(h)
        return lora(out, h, "head")[:, -1, :]


_PROCS: dict = {}


def _processors(settings: GenerationSettings):
    key = (settings.repetition_penalty, settings.no_repeat_ngram_size, settings.greedy, settings.temperature,
           settings.top_k, settings.top_p)
    procs = _PROCS.get(key)
    if procs is None:
        procs = _PROCS[key] = logits_processors(settings)
        if len(_PROCS) > 256:
            _PROCS.clear()
    return procs


def next_token(settings: GenerationSettings, history: torch.Tensor, scores: torch.Tensor,
               generator: torch.Generator) -> int:
    """One row's next token: what `sample_tokens(logits_processors(settings)(history, scores), generator)` draws (the
    argmax when greedy), with top-k and top-p worked out on the k candidates rather than the whole vocabulary. The
    generator draws the same uniform numbers (one per vocabulary entry) as sample_tokens, and the exponential race
    runs over the kept candidates only, where every other entry has probability 0; so the token is sample_tokens'
    (up to the last bit of a softmax summed over k entries instead of the vocabulary: tests/test_serving.py). One
    difference: equal scores straddling the top-p cut are ordered by a sort of the candidates, not of the whole
    vocabulary (torch.sort is unstable either way), so which of them is cut can differ from transformers'.
    Deterministic for the row's own scores, so a row's answer never depends on the rest of the batch."""
    from transformers import TopKLogitsWarper

    procs = _processors(settings)
    if settings.greedy:
        return int(procs(history, scores).argmax(-1))
    rest = list(procs)
    while rest and not isinstance(rest[0], TopKLogitsWarper):
        scores = rest.pop(0)(history, scores)  # repetition penalty, no-repeat n-grams, temperature
    vocab = scores.shape[-1]
    fast = bool(rest) and settings.top_p < 1.0 and len(rest) == 2 and settings.top_k < vocab
    if fast:
        vals, idx = scores[0].topk(settings.top_k)
        fast = bool(torch.isfinite(vals[-1]))  # else banned tokens among the k: the long way
    if fast:
        # the warper keeps every token tied with the k-th (common with bf16 logits): all of them are candidates
        tied = int((scores[0] >= vals[-1]).sum())
        if tied > settings.top_k:
            vals, idx = scores[0].topk(tied)
    if not fast:
        for proc in rest:
            scores = proc(history, scores)
        return int(sample_tokens(scores, generator)[0])
    ascending, order = vals.flip(0), idx.flip(0)
    remove = ascending.softmax(-1).cumsum(-1) <= (1 - settings.top_p)
    remove[-1:] = False  # min_tokens_to_keep = 1
    kept, kept_idx = ascending[~remove], order[~remove]
    race = torch.rand((1, vocab), generator=generator)[0, kept_idx].log_().neg_()
    return int(kept_idx[(kept.softmax(-1) / race).argmax()])


def process_scores(settings: GenerationSettings, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """What `logits_processors(settings)` makes of one row's scores (1, vocab), with top-p worked out over the top-k
    candidates only: transformers' TopPLogitsWarper sorts the whole vocabulary (49,152 entries for SmolLM2, ~2 ms a
    row on a 2-core CPU, the largest cost of a step's sampling at batch 8), although after top-k every other entry is
    -inf and has probability 0. The kept tokens and their scores are the processors' (tests/test_serving.py)."""
    procs = _processors(settings)
    if settings.greedy or not settings.top_k or settings.top_p >= 1.0:
        return procs(history, scores)
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    for proc in procs:
        if isinstance(proc, TopPLogitsWarper):
            break
        scores = proc(history, scores)
    # scores are now top-k filtered: the top-k entries (ties with the k-th included) and -inf elsewhere
    assert isinstance(procs[-1], TopPLogitsWarper) and any(isinstance(p, TopKLogitsWarper) for p in procs)
    keep = torch.isfinite(scores[0]).nonzero()[:, 0]
    cand = scores[0, keep]
    sorted_logits, order = torch.sort(cand, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative <= (1 - settings.top_p)
    remove[-1:] = False  # min_tokens_to_keep = 1
    dropped = keep[order[remove]]
    return scores.index_fill(1, dropped, -float("inf"))
