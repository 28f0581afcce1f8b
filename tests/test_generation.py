"""The decode engine (rlhflab.generation.sampling): greedy outputs equal generate()'s token for token, per-row stops,
cache growth, seeded sampling, LoRA adapters on a shared base, and the packed bf16 step."""
from __future__ import annotations

import pytest
import torch

from rlhflab.generation.engine import DecodeEngine, decode_engine, start_decode
from rlhflab.generation.sampling import GenerationSettings, decode_batch, encode_prompts, generate_batch
from rlhflab.models.hardware import bf16_packing_available
from rlhflab.models.loading import load_causal_lm

# Where oneDNN cannot pack bf16 weights (an AVX2-only CPU), the engine runs its exact loop on the bf16 modules
# instead; these tests then check that path against the same references.
BF16_KIND = "llama-packed-bf16" if bf16_packing_available() else "llama"
PROMPTS = ["Hi", "Tell me something about the weather today please, in detail.", "How are you?"]


def _generate_ids(model, tok, prompts, n, **kw):
    batch, _ = encode_prompts(tok, prompts, 256)
    out = model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    return batch, out[:, batch["input_ids"].shape[1]:]


def _engine_ids(model, batch, settings, stop_ids, pad_id):
    steps = list(decode_batch(model, batch["input_ids"], batch["attention_mask"], settings, stop_ids, pad_id))
    return torch.stack(steps, 1)


@pytest.mark.parametrize("prompts", [PROMPTS[1:2], PROMPTS], ids=["batch1", "batch3-padded"])
def test_greedy_engine_equals_generate_token_for_token(tiny_model_dir, prompts):
    model, tok = load_causal_lm(str(tiny_model_dir))
    n = 12
    batch, expected = _generate_ids(model, tok, prompts, n, min_new_tokens=n, repetition_penalty=1.3)
    settings = GenerationSettings(greedy=True, max_new_tokens=n, repetition_penalty=1.3)
    got = _engine_ids(model, batch, settings, stop_ids=[], pad_id=tok.pad_token_id)
    assert decode_engine(model).kind == ("llama" if "llama" in str(tiny_model_dir) else "transformers")
    assert got.tolist() == expected.tolist()


def test_each_row_stops_at_its_own_stop_token(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    # Sampled at a high temperature: the tiny random model's greedy output repeats one token in every row.
    settings = GenerationSettings(max_new_tokens=10, seed=0, temperature=2.0, top_k=0, top_p=1.0,
                                  repetition_penalty=1.0)
    free = _engine_ids(model, batch, settings, stop_ids=[], pad_id=tok.pad_token_id).tolist()
    stop = next(t for t in free[0][1:5] if t not in free[1])  # ends row 0 early and never row 1
    got = _engine_ids(model, batch, settings, stop_ids=[stop], pad_id=tok.pad_token_id).tolist()
    first = free[0].index(stop)
    assert got[0][:first + 1] == free[0][:first + 1] and set(got[0][first + 1:]) == {tok.pad_token_id}
    assert got[1] == free[1][:len(got[1])] and len(got[1]) > first + 1  # row 1 went on after row 0 stopped
    gens = generate_batch(model, tok, PROMPTS, GenerationSettings(greedy=True, max_new_tokens=6))
    assert [g.text for g in gens] == [g.text for g in generate_batch(model, tok, PROMPTS, GenerationSettings(
        greedy=True, max_new_tokens=6), batch_size=1)]


@pytest.mark.parametrize("kw", [dict(temperature=2.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
                                dict(temperature=1.5, top_k=50, top_p=0.95, repetition_penalty=1.3)],
                         ids=["plain", "processors"])
def test_finished_rows_are_dropped_without_changing_any_row(tiny_model_dir, monkeypatch, kw):
    """Once most of a batch has stopped, decode_batch goes on with the running rows only (their cache, mask and
    positions; the uniform numbers of each row's draw unchanged): every row's tokens are those of the batch decoded
    whole, and the later steps feed fewer rows."""
    from rlhflab.generation import engine, sampling

    model, tok = load_causal_lm(str(tiny_model_dir))
    prompts = [*PROMPTS, "What is the capital of France?", "Name three colours."]
    batch, _ = encode_prompts(tok, prompts, 256)
    settings = GenerationSettings(max_new_tokens=12, seed=3, **kw)
    free = _engine_ids(model, batch, settings, stop_ids=[], pad_id=tok.pad_token_id).tolist()
    # stop tokens that end some rows early and leave at least one running to the end
    stops = sorted({t for row in free[:-1] for t in row[1:6]} - set(free[-1]))
    assert stops, "the tiny model's rows should differ"
    widths = []
    forward = engine._DecodeState.forward
    monkeypatch.setattr(engine._DecodeState, "forward", lambda self, t: widths.append(t.shape[0]) or forward(self, t))
    monkeypatch.setattr(sampling, "COMPACT_AT", 0.0)  # never drop: the batch decoded whole
    whole = _engine_ids(model, batch, settings, stop_ids=stops, pad_id=tok.pad_token_id).tolist()
    assert set(widths) == {len(prompts)}
    widths.clear()
    monkeypatch.setattr(sampling, "COMPACT_AT", 0.75)
    dropped = _engine_ids(model, batch, settings, stop_ids=stops, pad_id=tok.pad_token_id).tolist()
    assert dropped == whole
    assert min(widths) < len(prompts)  # some steps ran on fewer rows
    ended = [next((j for j, t in enumerate(r) if t in stops), None) for r in whole]
    assert any(e is not None and e < len(whole[0]) - 2 for e in ended)  # rows really stopped early


def test_cache_grows_past_its_preallocated_length(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, expected = _generate_ids(model, tok, PROMPTS[:2], 8, min_new_tokens=8)
    state = start_decode(model, batch["attention_mask"], capacity=4)  # shorter than the prompt itself
    logits = state.forward(batch["input_ids"])
    got = []
    for _ in range(8):
        token = logits.argmax(-1)
        got.append(token)
        logits = state.forward(token[:, None])
    assert state.capacity >= batch["input_ids"].shape[1] + 8
    assert torch.stack(got, 1).tolist() == expected.tolist()


def test_sampling_with_a_seed_is_reproducible(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    settings = GenerationSettings(max_new_tokens=8, seed=3, temperature=1.5, top_k=0, top_p=1.0)
    a = [g.token_ids for g in generate_batch(model, tok, PROMPTS, settings)]
    b = [g.token_ids for g in generate_batch(model, tok, PROMPTS, settings)]
    c = [g.token_ids for g in generate_batch(model, tok, PROMPTS, GenerationSettings(**{**settings.as_dict(),
                                                                                        "seed": 4}))]
    assert a == b and a != c


def test_engine_notices_changed_weights(tiny_llama_dir):
    model, _ = load_causal_lm(str(tiny_llama_dir))
    first = decode_engine(model)
    assert decode_engine(model) is first
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    assert decode_engine(model) is not first


def _adapter_model(tiny_llama_dir, dtype):
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(str(tiny_llama_dir), dtype)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg, adapter_name="first")
    peft_model.add_adapter("second", cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # adapters at their zero init would not change anything
                p.normal_(0, 0.5)
    return peft_model.eval(), tok


@pytest.mark.parametrize("packed", [False, True], ids=["exact-fp32", "packed-bf16"])
def test_lora_adapters_on_a_shared_base(tiny_llama_dir, packed):
    """The engine follows set_adapter and disable_adapter: its logits are the model's own forward's."""
    if packed and not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build")
    model, tok = _adapter_model(tiny_llama_dir, torch.bfloat16 if packed else torch.float32)
    engine = DecodeEngine(model, packed=packed)
    object.__setattr__(model, "_rlhflab_engine", engine)
    assert engine.kind == (BF16_KIND if packed else "llama")
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    outs = {}
    for name in ("first", "second", "base"):
        ctx = model.disable_adapter() if name == "base" else _active(model, name)
        with ctx, torch.inference_mode():
            reference = model(**batch).logits[:, -1].float()
            got = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
        tol = 0.05 if packed else 1e-5  # bf16 rounding of a different kernel's summation order
        assert (got - reference).abs().max() < tol * reference.abs().max()
        outs[name] = got
    assert not torch.allclose(outs["first"], outs["second"]) and not torch.allclose(outs["first"], outs["base"])


class _active:
    def __init__(self, model, name):
        self.model, self.name = model, name

    def __enter__(self):
        self.model.set_adapter(self.name)

    def __exit__(self, *exc):
        return False


def test_packed_bf16_step_tracks_the_bf16_model(tiny_llama_dir):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build")
    model, tok = load_causal_lm(str(tiny_llama_dir), torch.bfloat16)
    engine = DecodeEngine(model, packed=True)
    object.__setattr__(model, "_rlhflab_engine", engine)
    batch, expected = _generate_ids(model, tok, PROMPTS, 6, min_new_tokens=6)
    got = _engine_ids(model, batch, GenerationSettings(greedy=True, max_new_tokens=6, repetition_penalty=1.0), [],
                      tok.pad_token_id)
    agree = (got == expected).float().mean().item()
    assert agree >= 0.8  # bf16: ties can break differently between kernels, most tokens agree


def test_fp32_weights_under_bf16_autocast_get_the_packed_step(tiny_llama_dir):
    """The policy trainers' rollouts: fp32 weights under bf16 autocast are packed in bf16 once; the step's logits
    track the model's own autocast forward, and leaving autocast rebuilds the exact fp32 step."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build")
    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        engine = decode_engine(model)
        assert engine.kind == BF16_KIND and decode_engine(model) is engine
        reference = model(**batch).logits[:, -1].float()
        got = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
    assert got.dtype == torch.float32 and (got - reference).abs().max() < 0.05 * reference.abs().max()
    exact = decode_engine(model)
    assert exact is not engine and exact.kind == "llama"


def test_adapter_steps_do_not_repack_the_base_but_are_followed(tiny_llama_dir):
    """LoRA training moves only the adapters: the packed base is kept, the adapters are read at every start."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build")
    model, tok = _adapter_model(tiny_llama_dir, torch.bfloat16)
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    engine = decode_engine(model)
    with torch.inference_mode():
        before = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1.0)
    assert decode_engine(model) is engine
    with torch.inference_mode():
        reference = model(**batch).logits[:, -1].float()
        after = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
    assert not torch.allclose(before, after)
    assert (after - reference).abs().max() < 0.05 * reference.abs().max()


def test_sampled_responses_are_ordinary_tensors_padded_after_the_stop(tiny_llama_dir):
    """A trainer feeds the responses to passes that record gradients: no inference tensors."""
    from rlhflab.generation.sampling import sample_responses

    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    settings = GenerationSettings(temperature=0.05, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)
    stop = int(model(**batch).logits[0, -1].argmax())  # row 0's first token (nearly greedy): row 0 stops at once
    responses = sample_responses(model, batch["input_ids"], batch["attention_mask"], settings, [stop], pad_id=-7,
                                 generator=torch.Generator().manual_seed(3))
    assert not responses.is_inference() and responses.shape[0] == len(PROMPTS) and responses.shape[1] <= 24
    assert responses[0, 0] == stop
    for row in responses.tolist():
        if stop in row:
            assert set(row[row.index(stop) + 1:]) <= {-7}
        else:
            assert -7 not in row
    model.get_input_embeddings()(responses.clamp(min=0)).sum().backward()  # usable where gradients are recorded


def test_quantize_int8_round_trips_within_half_a_step():
    from rlhflab.generation.engine import quantize_int8

    w = torch.randn(7, 33) * torch.logspace(-3, 1, 7)[:, None]  # rows of very different scales
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and scale.shape == (7,)
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()


def test_int8_decode_is_opt_in_and_tracks_the_model(tiny_llama_dir):
    from rlhflab.generation.engine import int8_available, use_int8_decode

    if not int8_available():
        pytest.skip("this torch build has no weight-only int8 kernel")
    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    assert decode_engine(model).kind == "llama"
    use_int8_decode(model)
    engine = decode_engine(model)
    assert engine.kind == "llama-int8" and decode_engine(model) is engine
    with torch.inference_mode():
        reference = model(**batch).logits[:, -1].float()
        got = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
    assert 0 < (got - reference).abs().max() < 0.05 * reference.abs().max()  # int8 rounding: close, not equal
    use_int8_decode(model, False)
    assert decode_engine(model).kind == "llama"


def test_sample_tokens_draws_from_the_softmax():
    """The exponential race is an exact draw: frequencies match softmax(scores), a zero-probability token never
    comes up, and the same generator seed gives the same draws."""
    from rlhflab.generation.sampling import sample_tokens

    target = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    scores = target.log().expand(4000, -1)  # 4000 rows drawn at once, as a batch
    draws = sample_tokens(scores, torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert freq[4] == 0 and (freq - target).abs().max() < 0.03  # 4000 draws: the binomial s.d. is <= 0.008
    again = sample_tokens(scores, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


def test_a_cpu_without_bf16_instructions_gets_no_bf16_packing_or_autocast(tiny_llama_dir, monkeypatch):
    """An AVX2-only CPU (simulated through RLHFLAB_CPU_FLAGS): oneDNN's bf16 packing would raise there, so the
    engine runs its exact loop on bf16 weights, and no precision choice asks for bf16."""
    from rlhflab.models.hardware import cpu_flags, vector_features
    from rlhflab.models.precision import autocast_dtype, policy_dtype

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "sse4_2 avx avx2 fma")
    assert cpu_flags() == {"sse4_2", "avx", "avx2", "fma"} and vector_features() == "AVX2"
    assert not bf16_packing_available()
    assert autocast_dtype(True, "cpu") is None and policy_dtype(True, "cpu") is torch.float32
    model, tok = load_causal_lm(str(tiny_llama_dir), torch.bfloat16)
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    engine = decode_engine(model)
    assert engine.kind == "llama" and engine._packed is None
    with torch.inference_mode():
        reference = model(**batch).logits[:, -1].float()
        got = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
    assert (got - reference).abs().max() < 0.05 * reference.abs().max()
    # the same CPU under bf16 autocast (a trainer's rollouts asked for bf16): still the exact loop
    fp32, _ = load_causal_lm(str(tiny_llama_dir))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        assert decode_engine(fp32).kind == "llama"


def test_the_avx2_emulation_hides_avx512_and_amx(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 cap torch's kernels below AVX-512; the lab's flags follow."""
    from rlhflab.models.hardware import cpu_flags, vector_features

    monkeypatch.delenv("RLHFLAB_CPU_FLAGS", raising=False)
    for name, value in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.setenv(name, value)
        assert not any(f.startswith(("avx512", "amx")) for f in cpu_flags())
        assert "AVX-512" not in vector_features() and "AMX" not in vector_features()
    assert vector_features(frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})) == "AVX-512 + AVX512-BF16 + AMX"


def test_int8_projections_can_keep_the_lm_head(tiny_llama_dir):
    """use_int8_decode(head=False): int8 projections, the LM head in the model's own dtype; closer to the model than
    int8 everywhere on the same logits."""
    from rlhflab.generation.engine import int8_available, use_int8_decode

    if not int8_available():
        pytest.skip("this torch build has no weight-only int8 kernel")
    model, tok = load_causal_lm(str(tiny_llama_dir))
    batch, _ = encode_prompts(tok, PROMPTS, 256)
    errors = {}
    with torch.inference_mode():
        reference = model(**batch).logits[:, -1].float()
        for head in (True, False):
            use_int8_decode(model, True, head=head)
            engine = decode_engine(model)
            assert engine.kind == ("llama-int8" if head else "llama-int8-proj")
            got = start_decode(model, batch["attention_mask"], 32).forward(batch["input_ids"]).float()
            errors[head] = (got - reference).abs().max().item()
    use_int8_decode(model, False)
    assert decode_engine(model).kind == "llama"
    assert 0 < errors[False] < errors[True] < 0.05 * reference.abs().max()


def _one_row_with_answer(tok):
    batch, _ = encode_prompts(tok, PROMPTS[1:2], 256)
    ids = torch.cat([batch["input_ids"], torch.tensor([[5, 9, 13, 21, 7, 3]])], 1)
    return ids, torch.ones_like(ids), batch["input_ids"].shape[1]


def test_fp16_decode_weights_serve_narrow_steps_only(tiny_llama_dir, monkeypatch):
    """use_decode_weights(model, "fp16") on a CPU without native bf16: a step of at most FP16_MAX_ROWS rows reads fp16
    weights (close to the fp32 logits, not equal); a prompt's prefill and a wider batch read the model's own fp32
    weights (equal to the exact loop's logits, bit for bit)."""
    from rlhflab.generation.engine import FP16_MAX_ROWS, engine_logits, use_decode_weights

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 f16c fma")
    model, tok = load_causal_lm(str(tiny_llama_dir))
    ids, mask, context = _one_row_with_answer(tok)
    wide = ids.expand(FP16_MAX_ROWS + 1, -1)
    exact, exact_wide = engine_logits(model, ids, mask, context), engine_logits(model, wide, mask.expand_as(wide), context)
    use_decode_weights(model, "fp16")
    assert decode_engine(model).kind == "llama-fp16"
    half = engine_logits(model, ids, mask, context)
    assert torch.equal(half[:, 0], exact[:, 0])  # the prefill
    assert 0 < (half[:, 1:] - exact[:, 1:]).abs().max() < 1e-2 * exact.abs().max()  # fp16 rounding: close, not equal
    assert torch.equal(engine_logits(model, wide, mask.expand_as(wide), context), exact_wide)
    use_decode_weights(model, None)
    assert decode_engine(model).kind == "llama"


def test_fp16_decode_weights_only_where_they_serve(tiny_llama_dir, monkeypatch):
    """fp16 weights are asked for, but the engine keeps its other step: on a CPU without F16C (not measured), for a bf16
    model, and under bf16 autocast; a bad format name is refused."""
    from rlhflab.generation.engine import use_decode_weights

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "sse4_2 avx fma")
    model, _ = load_causal_lm(str(tiny_llama_dir))
    assert DecodeEngine(model, quantize="fp16").kind == "llama"
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 f16c fma")
    assert DecodeEngine(model, quantize="fp16").kind == "llama-fp16"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert DecodeEngine(model, quantize="fp16").kind == "llama"
    bf16, _ = load_causal_lm(str(tiny_llama_dir), torch.bfloat16)
    assert DecodeEngine(bf16, quantize="fp16").kind == "llama"
    with pytest.raises(ValueError, match="fp16"):
        use_decode_weights(model, "fp8")


def test_fp16_decode_weights_follow_lora_adapters_and_training(tiny_llama_dir, monkeypatch):
    """On the fp16 step, LoRA adapters are applied as peft does (each adapter's logits, not the base's), and an
    optimizer step on the base weights rebuilds the fp16 copies."""
    from rlhflab.generation.engine import engine_logits, use_decode_weights

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 f16c fma")
    model, tok = _adapter_model(tiny_llama_dir, torch.float32)
    use_decode_weights(model, "fp16")
    ids, mask, context = _one_row_with_answer(tok)
    outs = {}
    for name in ("first", "second", "base"):
        ctx = model.disable_adapter() if name == "base" else _active(model, name)
        with ctx, torch.inference_mode():
            reference = model(input_ids=ids).logits[:, context - 1:-1].float()
            got = engine_logits(model, ids, mask, context)
        assert decode_engine(model).kind == "llama-fp16"
        assert (got - reference).abs().max() < 1e-2 * reference.abs().max()
        outs[name] = got
    assert not torch.allclose(outs["first"], outs["second"]) and not torch.allclose(outs["first"], outs["base"])
    plain, _ = load_causal_lm(str(tiny_llama_dir))
    use_decode_weights(plain, "fp16")
    before = engine_logits(plain, ids, mask, context)
    with torch.no_grad():
        plain.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    after = engine_logits(plain, ids, mask, context)
    with torch.inference_mode():
        reference = plain(input_ids=ids).logits[:, context - 1:-1].float()
    assert not torch.allclose(before, after) and (after - reference).abs().max() < 1e-2 * reference.abs().max()
