"""The decode engine: forward steps of a causal LM over a preallocated KV cache, with packed bf16, fp16 or int8 weights
where they serve."""
from __future__ import annotations

import torch

from rlhflab.models.hardware import bf16_packing_available, fp16_matmul_available

# Decode steps of at most this many rows (batch x new tokens) read fp16 weights in the "llama-fp16" step. On a CPU
# without native bf16, MKL's fp16 matrix-vector kernel streams the half-size weights 2.3-2.7x as fast as the fp32
# one at 1-3 rows, 1.6x at 4, and is slower from 8 rows on (BENCHMARKS.md, "Decoding without native bf16"); a
# prompt's prefill and a wide batch keep the fp32 weights.
FP16_MAX_ROWS = 4


def _grow(buf: torch.Tensor, needed: int) -> torch.Tensor:
    """`buf` (..., capacity, head_dim) with room for `needed` positions: doubled and copied when too small."""
    if buf.shape[-2] >= needed:
        return buf
    bigger = buf.new_zeros(*buf.shape[:-2], max(needed, 2 * buf.shape[-2]), buf.shape[-1])
    bigger[..., :buf.shape[-2], :] = buf
    return bigger


class _PreallocatedLayer:
    """A transformers cache layer that writes into a preallocated buffer (no torch.cat per token) and hands
    attention a view of exactly the filled length, so the maths is the growing cache's."""

    def __new__(cls, capacity: int):
        from transformers.cache_utils import DynamicLayer

        class Layer(DynamicLayer):
            def lazy_initialization(self, key_states, value_states):
                super().lazy_initialization(key_states, value_states)
                shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
                self._k = key_states.new_zeros(shape)
                self._v = value_states.new_zeros(*value_states.shape[:-2], capacity, value_states.shape[-1])
                self._n = 0

            def update(self, key_states, value_states, *args, **kwargs):
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                end = self._n + key_states.shape[-2]
                self._k, self._v = _grow(self._k, end), _grow(self._v, end)
                self._k[..., self._n:end, :] = key_states
                self._v[..., self._n:end, :] = value_states
                self._n = end
                self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
                return self.keys, self.values

        return Layer()


def _cpu_autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _packing_dtype(model) -> torch.dtype | None:
    """bf16 where oneDNN's packed bf16 kernel can serve this model: bf16 weights on a CPU, or fp32 weights under
    bf16 autocast (the policy trainers' rollouts), where autocast would run these matmuls in bf16 anyway."""
    p = next(model.parameters())
    if p.device.type != "cpu" or not bf16_packing_available():
        return None
    if p.dtype == torch.bfloat16 or (p.dtype == torch.float32 and _cpu_autocast_bf16()):
        return torch.bfloat16
    return None


class _FusedLinear:
    """The modules fused into one matmul (q|k|v, gate|up, or one alone): their weights concatenated, their biases
    (zeros for a module without one) in `dtype`, and `parts`, the output widths split again on the way out."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], dtype: torch.dtype):
        self.weight = torch.cat([t.detach() for t in weights]) if len(weights) > 1 else weights[0].detach()
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach().to(dtype) if b is not None else torch.zeros(t.shape[0], dtype=dtype, device=t.device)
             for b, t in zip(biases, weights)])
        self.parts = [t.shape[0] for t in weights]

    def _split(self, y: torch.Tensor) -> list[torch.Tensor]:
        return list(y.split(self.parts, -1)) if len(self.parts) > 1 else [y]


class _PackedLinear(_FusedLinear):
    """y = x Wᵀ (+ b) with W packed once for oneDNN's bf16 kernel."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], dtype: torch.dtype):
        super().__init__(weights, biases, dtype)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.to(dtype).contiguous(), 1)
        del self.weight  # the packed copy is the one kept

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._split(torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], ""))


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric weight-only int8 per output channel: (q int8 (out, in), scale fp32 (out,)), w ≈ q * scale."""
    w = w.detach().float()
    scale = w.abs().amax(1).clamp(min=1e-8) / 127.0
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous(), scale


class _Int8Linear(_FusedLinear):
    """y = x (q · scale)ᵀ (+ b) with int8 weights (quantize_int8): half the bytes bf16 reads per token, through
    torch's weight-only int8 kernel."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], dtype: torch.dtype):
        super().__init__(weights, biases, dtype)
        self.q, scale = quantize_int8(self.weight)
        self.scale = scale.to(dtype)
        del self.weight  # the int8 copy is the one kept

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.q, self.scale).reshape(*x.shape[:-1], -1)
        return self._split(y if self.bias is None else y + self.bias)


class _HalfLinear(_FusedLinear):
    """y = x Wᵀ (+ b) with W stored in fp16 and x rounded to fp16 on the way in: half the bytes of fp32 per token,
    through MKL's fp16 kernel (fp32 accumulation); the output returns in x's dtype, so the residual stream, the
    norms, attention and the KV cache stay in the model's fp32."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], dtype: torch.dtype):
        super().__init__(weights, biases, dtype)
        self.weight = self.weight.to(torch.float16).contiguous()

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch.nn.functional.linear(x.to(torch.float16), self.weight).to(x.dtype)
        return self._split(y if self.bias is None else y + self.bias)


class _DenseLinear(_FusedLinear):
    """y = x Wᵀ (+ b) with W as the model holds it (a layer kept out of int8 decoding)."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor | None], dtype: torch.dtype):
        super().__init__(weights, biases, dtype)
        self.weight = self.weight.to(dtype)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._split(torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias))


DECODE_WEIGHTS = (None, "int8", "int8-proj", "fp16")


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def _lora_deltas(module) -> list | None:
    """peft LoRA on `module` as [(A, B, scaling)] for its active adapters ([] when none apply, None when the
    layer does something this engine does not replicate: merged weights, DoRA or other variants)."""
    if not hasattr(module, "lora_A"):
        return []
    if getattr(module, "merged", False) or getattr(module, "lora_variant", {}):
        return None
    if module.disable_adapters:
        return []
    return [(module.lora_A[a].weight, module.lora_B[a].weight, module.scaling[a])
            for a in module.active_adapters if a in module.lora_A]


def _apply_lora(result: torch.Tensor, x: torch.Tensor, deltas: list) -> torch.Tensor:
    # peft's lora.Linear.forward, step for step: the input is cast to the adapter's dtype and the sum is
    # taken in the wider dtype, then cast back to the base layer's output dtype.
    if not deltas:
        return result
    out_dtype = result.dtype
    for a, b, scaling in deltas:
        xa = x.to(a.dtype)
        result = result + torch.nn.functional.linear(torch.nn.functional.linear(xa, a), b) * scaling
    return result.to(out_dtype)


def _base_linear(module):
    return getattr(module, "base_layer", module)


class DecodeEngine:
    """Forward steps of one causal LM over a preallocated KV cache.

    `kind` says which step runs: "llama-packed-bf16" (a Llama-family model on a CPU, in bf16 or under bf16
    autocast: the projections packed for oneDNN in bf16, q|k|v and gate|up fused, LoRA adapters applied as
    peft does, the residual stream and KV cache in bf16), "llama" (the same lean per-layer loop calling the
    model's own modules: exact, no weight copies) or "transformers" (any other model: its own forward with the
    preallocated cache). Build with `decode_engine(model)`, which keeps one engine per model and rebuilds it
    when the packed weights change (an optimizer step) or autocast is switched on or off.
    """

    def __init__(self, model, packed: bool | None = None, quantize: str | None = None):
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.lm = inner
        core = getattr(inner, "model", None)
        self.config = inner.config
        llama = (getattr(self.config, "model_type", None) == "llama" and core is not None
                 and hasattr(core, "layers") and hasattr(core, "rotary_emb") and hasattr(inner, "lm_head"))
        self.core = core if llama else None
        if quantize not in DECODE_WEIGHTS:
            raise ValueError(f"quantize must be None or one of {', '.join(DECODE_WEIGHTS[1:])}, got {quantize!r}")
        p = next(model.parameters())
        on_cpu = p.device.type == "cpu"  # torch's weight-only int8 and MKL's fp16 kernels are CPU kernels
        self.dtype = _packing_dtype(model) if llama and packed is not False else None
        # fp16 serves an fp32 model where nothing faster is packed (no native bf16); elsewhere the model's own step
        can = (int8_available() if quantize in ("int8", "int8-proj")
               else self.dtype is None and p.dtype == torch.float32 and not _cpu_autocast_bf16()
               and fp16_matmul_available())
        self.quantize = quantize if quantize and llama and on_cpu and packed is not False and can else None
        if self.quantize:
            self.dtype = self.dtype or p.dtype
        self.kind = ("transformers" if not llama else f"llama-{self.quantize}" if self.quantize
                     else "llama-packed-bf16" if self.dtype is not None else "llama")
        self._autocast = _cpu_autocast_bf16()
        self._weights_key = self._key()
        self._packed = None
        self._small_rows = FP16_MAX_ROWS if self.quantize == "fp16" else None
        if self.dtype is not None:  # fp16 copies, int8 or packed bf16 (self.dtype is the model's for the first two)
            linear = {"fp16": _HalfLinear, None: _PackedLinear}.get(self.quantize, _Int8Linear)
            self._packed = [
                (linear(*self._wb([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj])),
                 linear(*self._wb([l.self_attn.o_proj])),
                 linear(*self._wb([l.mlp.gate_proj, l.mlp.up_proj])),
                 linear(*self._wb([l.mlp.down_proj])))
                for l in core.layers]
            # "int8-proj" keeps the LM head (the tied embedding, a fifth of a small model's weights) in the model's
            # dtype: the logits are where rounding shows most directly in the sampled distribution.
            head = _DenseLinear if self.quantize == "int8-proj" else linear
            self._head = head(*self._wb([inner.lm_head]))

    def _wb(self, modules):
        bases = [_base_linear(m) for m in modules]
        return [b.weight for b in bases], [b.bias for b in bases], self.dtype

    def _key(self):
        # A tensor's _version counts in-place writes (optimizer steps, load_state_dict), so packed copies
        # made from older weights are never used after training moved them. LoRA adapters are read live at
        # every start(), so their steps do not force a repack of the frozen base.
        return tuple((p.data_ptr(), p.dtype, _version(p)) for n, p in self.model.named_parameters() if "lora_" not in n)

    def current(self) -> bool:
        return self._autocast == _cpu_autocast_bf16() and self._key() == self._weights_key

    def start(self, attention_mask: torch.Tensor, capacity: int) -> "_DecodeState":
        return _DecodeState(self, attention_mask, capacity)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter; it cannot be trained either
        return -1


def decode_engine(model) -> DecodeEngine:
    """The model's decode engine, built on first use and rebuilt when its weights have changed; int8 weights where
    `use_int8_decode(model)` asked for them."""
    engine = getattr(model, "_rlhflab_engine", None)
    quantize = getattr(model, "_rlhflab_quantize", None)
    if engine is None or not engine.current() or engine.quantize != quantize:
        engine = DecodeEngine(model, quantize=quantize)
        object.__setattr__(model, "_rlhflab_engine", engine)  # a plain attribute, not a submodule
    return engine


def use_int8_decode(model, on: bool = True, head: bool = True):
    """Decode this model with weight-only int8 projections and, unless `head=False`, LM head (Llama family; see
    BENCHMARKS.md for what each costs in KL and reward); training and scoring passes keep the model's own weights."""
    return use_decode_weights(model, None if not on else "int8" if head else "int8-proj")


def use_decode_weights(model, fmt: str | None):
    """Decode this model from weights in `fmt` (DECODE_WEIGHTS; None: its own). "fp16" serves an fp32 Llama-family
    model on a CPU without native bf16, at steps of at most FP16_MAX_ROWS rows (chat), where the engine would
    otherwise read fp32; elsewhere the engine ignores it. Training and scoring passes keep the model's own weights."""
    if fmt not in DECODE_WEIGHTS:
        raise ValueError(f"decode weights must be None or one of {', '.join(DECODE_WEIGHTS[1:])}, got {fmt!r}")
    object.__setattr__(model, "_rlhflab_quantize", fmt)
    return model


class _DecodeState:
    """One batch being decoded: its KV cache, which key positions are real tokens, and each row's position."""

    def __init__(self, engine: DecodeEngine, attention_mask: torch.Tensor, capacity: int):
        self.engine = engine
        self.mask = attention_mask.bool()
        self.padded = not bool(self.mask.all())
        self.length = 0
        self.capacity = max(capacity, attention_mask.shape[1])
        self.lora = None
        if engine.kind != "transformers":
            cfg = engine.config
            n_layers, device = len(engine.core.layers), attention_mask.device
            heads = cfg.num_attention_heads
            self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            self.kv_heads = cfg.num_key_value_heads
            dtype = engine.dtype or next(engine.core.parameters()).dtype
            shape = (attention_mask.shape[0], self.kv_heads, self.capacity, self.head_dim)
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
            if engine._packed is not None:
                self.lora = [[_lora_deltas(m) for m in (l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj,
                                                        l.self_attn.o_proj, l.mlp.gate_proj, l.mlp.up_proj,
                                                        l.mlp.down_proj)] for l in engine.core.layers]
                self.lora_head = _lora_deltas(engine.lm.lm_head)
                if any(d is None for row in self.lora for d in row) or self.lora_head is None:
                    raise _Unsupported
        else:
            from transformers.cache_utils import Cache

            n_layers = engine.config.get_text_config(decoder=True).num_hidden_layers
            self.cache = Cache(layers=[_PreallocatedLayer(self.capacity) for _ in range(n_layers)])

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Go on decoding only these rows (indices into the current batch): their cache, mask and positions."""
        self.mask = self.mask[rows]
        self.padded = not bool(self.mask.all())
        if self.engine.kind != "transformers":
            self.k = [t[rows] for t in self.k]
            self.v = [t[rows] for t in self.v]
            return
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer._k, layer._v = layer._k[rows], layer._v[rows]
                layer.keys, layer.values = layer._k[..., :layer._n, :], layer._v[..., :layer._n, :]

    def positions(self, new: int) -> torch.Tensor:
        """Position ids of the last `new` tokens as generate() numbers them: real tokens count from 0."""
        pos = self.mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(~self.mask, 1)
        return pos[:, -new:]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, vocab) at the last position after feeding `tokens` (batch, new); the first call is the
        prompt, with the mask given at start, later calls one token per row."""
        new = tokens.shape[1]
        if self.length:
            ones = self.mask.new_ones(self.mask.shape[0], new)
            self.mask = torch.cat([self.mask, ones], 1)
        position_ids = self.positions(new)
        if self.engine.kind == "transformers":
            out = self.engine.model(input_ids=tokens, attention_mask=self.mask.long(), position_ids=position_ids,
                                    past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            self.length += new
            return out.logits[:, -1, :]
        return self._llama(tokens, position_ids)

    def _attention_mask(self, new: int, end: int) -> torch.Tensor | None:
        if not self.padded:
            return None
        keys = self.mask[:, None, None, :end]
        if new == 1:
            return keys
        q = torch.arange(end - new, end, device=keys.device)[:, None]
        k = torch.arange(end, device=keys.device)[None, :]
        # A padding query may see only itself: with no key at all its softmax would be NaN, and that NaN would
        # reach real tokens through its cached value (0 × NaN). Real tokens never attend to it.
        return (keys & (k <= q)) | (k == q)

    def _llama(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        if self.engine.dtype is None:
            return self._llama_step(tokens, position_ids)
        # The packed step sets its own dtypes: autocast would re-cast its bf16 tensors for nothing.
        with torch.autocast("cpu", enabled=False):
            return self._llama_step(tokens, position_ids)

    def _llama_step(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        F = torch.nn.functional
        engine, core = self.engine, self.engine.core
        batch, new = tokens.shape
        start, end = self.length, self.length + new
        if end > self.capacity:
            self.k = [_grow(t, end) for t in self.k]
            self.v = [_grow(t, end) for t in self.v]
            self.capacity = self.k[0].shape[-2]
        mask = self._attention_mask(new, end)
        # fp16 weights serve narrow steps only (FP16_MAX_ROWS); a prefill or a wide batch runs the model's own fp32
        self._narrow = engine._small_rows is None or batch * new <= engine._small_rows
        # The residual stream stays in the model's dtype, as under autocast (fp32 for a policy in training); the
        # packed projections, attention and the KV cache run in the packed dtype, so norm outputs are cast to it.
        dt = engine.dtype
        cast = (lambda t: t.to(dt)) if dt is not None else (lambda t: t)
        h = core.embed_tokens(tokens)
        cos, sin = core.rotary_emb(cast(h), position_ids)
        heads, kv_heads, d = self.engine.config.num_attention_heads, self.kv_heads, self.head_dim
        for i, layer in enumerate(core.layers):
            attn = layer.self_attn
            x = cast(layer.input_layernorm(h))
            if self._packed_layer(i) is None:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            else:
                lora = self.lora[i]
                q, k, v = self._packed_layer(i)[0](x)
                q, k, v = _apply_lora(q, x, lora[0]), _apply_lora(k, x, lora[1]), _apply_lora(v, x, lora[2])
            q = q.view(batch, new, heads, d).transpose(1, 2)
            k = k.view(batch, new, kv_heads, d).transpose(1, 2)
            v = v.view(batch, new, kv_heads, d).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v
            keys, values = self.k[i][:, :, :end], self.v[i][:, :, :end]
            # transformers' SDPA path: GQA inside the kernel without a mask, repeated heads with one.
            if mask is None:
                o = F.scaled_dot_product_attention(q, keys, values, is_causal=new > 1, scale=attn.scaling,
                                                   enable_gqa=heads != kv_heads)
            else:
                groups = heads // kv_heads
                o = F.scaled_dot_product_attention(q, repeat_kv(keys, groups), repeat_kv(values, groups),
                                                   attn_mask=mask, scale=attn.scaling)
            o = o.transpose(1, 2).reshape(batch, new, heads * d)
            if self._packed_layer(i) is None:
                h = h + attn.o_proj(o)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            else:
                h = h + _apply_lora(self._packed_layer(i)[1](o)[0], o, lora[3])
                x = cast(layer.post_attention_layernorm(h))
                gate, up = self._packed_layer(i)[2](x)
                gate, up = _apply_lora(gate, x, lora[4]), _apply_lora(up, x, lora[5])
                y = layer.mlp.act_fn(gate) * up
                h = h + _apply_lora(self._packed_layer(i)[3](y)[0], y, lora[6])
        self.length = end
        h = cast(core.norm(h[:, -1:, :]))
        if engine._packed is None or not self._narrow:
            return engine.lm.lm_head(h)[:, -1, :]
        return _apply_lora(engine._head(h)[0], h, self.lora_head)[:, -1, :]

    def _packed_layer(self, i: int):
        return None if self.engine._packed is None or not self._narrow else self.engine._packed[i]


class _Unsupported(Exception):
    """The packed step cannot replicate this model's current adapter setup; the exact step runs instead."""


def start_decode(model, attention_mask: torch.Tensor, capacity: int) -> _DecodeState:
    engine = decode_engine(model)
    try:
        return engine.start(attention_mask, capacity)
    except _Unsupported:
        return DecodeEngine(model, packed=False).start(attention_mask, capacity)


@torch.inference_mode()
def engine_logits(model, ids: torch.Tensor, mask: torch.Tensor, context: int) -> torch.Tensor:
    """The decode engine's logits (fp32) predicting each position from `context` on, for given sequences (left-padded
    prompts of width `context`, then the response tokens), fed through its KV cache one token at a time as when it
    samples: what sampled tokens were drawn from, to hold against a full forward pass (rlhflab.measure.kl.response_logits)."""
    state = start_decode(model, mask[:, :context], ids.shape[1])
    steps = [state.forward(ids[:, :context])]
    steps += [state.forward(ids[:, j:j + 1]) for j in range(context, ids.shape[1] - 1)]
    return torch.stack(steps, 1).float()
