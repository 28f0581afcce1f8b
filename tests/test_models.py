"""Model loading, prompt formatting and the padding guard for Llama-style and GPT-2-style tokenizers."""
import pytest

from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, generate_batch
from rlhflab.models.loading import load_causal_lm, load_tokenizer, lora_target_modules
from rlhflab.models.prompts import format_prompt, with_system


def test_prompt_format_chat_template_and_plain(tiny_llama_dir, tiny_gpt2_dir):
    llama_tok = load_tokenizer(tiny_llama_dir)
    text = format_prompt(llama_tok, "Hi?")
    assert "<|im_start|>user\nHi?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    gpt2_tok = load_tokenizer(tiny_gpt2_dir)
    history = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": "Bye?"}]
    assert format_prompt(gpt2_tok, history) == "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Bye?\n\nAssistant:"


def test_a_system_message_replaces_the_templates_default_and_a_history_keeps_its_own(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    default = format_prompt(tok, "Hi?")
    asked = format_prompt(tok, with_system("Hi?", "Be brief."))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in asked and "Be brief." not in default
    assert asked.count("<|im_start|>system") == 1  # replaces the template's default system message, not added to it
    assert with_system("Hi?", None) == "Hi?"  # no system message: the prompt is unchanged
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi?"}]
    assert with_system(own, "Be brief.") == own  # a history's own system message stands


def test_padding_guard_left_side_and_pad_never_inside_prompts(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.padding_side == "left"
    ids = tok(format_prompt(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                  {"role": "user", "content": "c"}]))["input_ids"]
    assert tok.pad_token_id is not None and tok.pad_token_id not in ids


def test_smollm_pad_is_not_im_end(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.convert_tokens_to_ids("<|im_end|>")


def test_batched_generation_matches_one_at_a_time(tiny_model_dir):
    model, tok = load_causal_lm(str(tiny_model_dir))
    prompts = ["Hello there, how are you?", "Hi", "Tell me something about the weather today please."]
    settings = GenerationSettings(greedy=True, max_new_tokens=6, repetition_penalty=1.0)
    batched = generate_batch(model, tok, prompts, settings, batch_size=3)
    single = [generate_batch(model, tok, [p], settings, batch_size=1)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(0 < g.num_tokens <= 6 for g in batched)


def test_settings_out_of_range_name_the_setting():
    with pytest.raises(UserError, match="temperature"):
        GenerationSettings(temperature=9.0).validate()
    with pytest.raises(UserError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0).validate()
    with pytest.raises(UserError, match="top_k"):
        GenerationSettings(top_k="lots").validate()


def test_lora_targets_per_architecture(tiny_llama_dir, tiny_gpt2_dir):
    assert lora_target_modules(load_causal_lm(str(tiny_llama_dir))[0]) == ["q_proj", "v_proj"]
    assert lora_target_modules(load_causal_lm(str(tiny_gpt2_dir))[0]) == ["c_attn"]


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError):
        load_causal_lm("definitely/not-a-cached-model")


def test_streaming_decoder_matches_generate_greedy(tiny_model_dir):
    from rlhflab.generation.sampling import stream_generate
    model, tok = load_causal_lm(str(tiny_model_dir))
    settings = GenerationSettings(greedy=True, max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2)
    expected = generate_batch(model, tok, ["Tell me about cats."], settings)[0]
    gen = stream_generate(model, tok, "Tell me about cats.", settings)
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as stop:
        final = stop.value
    assert final.text == expected.text and final.num_tokens == expected.num_tokens
    assert pieces and pieces[-1].strip() == expected.text


def test_long_prompt_is_truncated_and_reported(tiny_llama_dir):
    from rlhflab.generation.sampling import stream_generate
    model, tok = load_causal_lm(str(tiny_llama_dir))
    gen = stream_generate(model, tok, "word " * 5000, GenerationSettings(max_new_tokens=2), max_prompt_tokens=64)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        assert stop.value.prompt_truncated


def test_generating_policies_hold_bf16_weights_only_where_bf16_is_fast(monkeypatch):
    import torch

    from rlhflab.models import precision as models
    from space.registry import Registry

    assert models.policy_dtype(False, "cpu") is torch.float32
    monkeypatch.setattr(models, "autocast_dtype", lambda want, device="cpu": torch.bfloat16 if want else None)
    assert models.policy_dtype(True, "cpu") is torch.bfloat16
    monkeypatch.setattr(models, "autocast_dtype", lambda want, device="cpu": None)  # a CPU without bf16
    assert models.policy_dtype(True, "cpu") is torch.float32
    assert Registry(env={}).want_bf16 and Registry(env={"RLHFLAB_BF16": "1"}).want_bf16
    assert not any(Registry(env={"RLHFLAB_BF16": v}).want_bf16 for v in ("0", "false", "off", " No "))
    assert Registry(env={}).decode_weights == "fp16"
    assert Registry(env={"RLHFLAB_INT8_DECODE": "1"}).decode_weights == "int8"
    assert Registry(env={"RLHFLAB_DECODE_WEIGHTS": "FP32"}).decode_weights is None
    assert Registry(env={"RLHFLAB_DECODE_WEIGHTS": "int8-proj"}).decode_weights == "int8-proj"
    assert Registry(env={"RLHFLAB_DECODE_WEIGHTS": "fp8"}).decode_weights == "fp16"  # unknown: the default, said


def test_decode_weights_are_the_apps_choice_only(tiny_llama_dir, monkeypatch):
    """PolicySet decodes from other weights only when asked (the app asks for fp16 by default, int8 on request); by
    default, and so in the evaluation, the engine runs the model's own weights."""
    from rlhflab.generation.engine import decode_engine, int8_available
    from rlhflab.models.policies import BASE, PolicySet

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 f16c fma")  # a CPU without native bf16: fp32 policies
    plain = PolicySet(str(tiny_llama_dir))
    with plain.use(BASE) as (model, _):
        assert decode_engine(model).kind == "llama"
    chat = PolicySet(str(tiny_llama_dir), decode_weights="fp16")
    with chat.use(BASE) as (model, _):
        assert decode_engine(model).kind == "llama-fp16"
    if int8_available():
        fast = PolicySet(str(tiny_llama_dir), decode_weights="int8")
        with fast.use(BASE) as (model, _):
            assert decode_engine(model).kind == "llama-int8"


def test_env_flags_share_one_reading(capsys):
    """RLHFLAB_BF16 and RLHFLAB_PRELOAD read the same words; an unknown word keeps the default and says so."""
    from space.registry import env_flag

    for default in (False, True):
        assert env_flag({}, "X", default) is default and env_flag({"X": " "}, "X", default) is default
        assert all(env_flag({"X": v}, "X", default) for v in ("1", "TRUE", "yes", " On "))
        assert not any(env_flag({"X": v}, "X", default) for v in ("0", "False", "no", "OFF"))
    assert env_flag({"X": "maybe"}, "X", True) is True and env_flag({"X": "maybe"}, "X", False) is False
    assert "X='maybe' is not one of" in capsys.readouterr().out


def test_bf16_policies_chat_including_a_lora_adapter_on_the_bf16_base(tmp_path, tiny_llama_dir):
    """The app's policies in bf16 (as on a CPU with AVX512-bf16): base, full and LoRA all stream an answer,
    and the adapter changes the base's output (its fp32 weights apply to the bf16 base's activations)."""
    import torch
    from test_app import write_tiny_checkpoints

    from rlhflab.generation.sampling import stream_generate
    from rlhflab.models.policies import PolicySet

    store = write_tiny_checkpoints(tmp_path / "store", tiny_llama_dir, kinds=("full", "lora"))
    policies = PolicySet(str(tiny_llama_dir), {"full": str(store / "ppo-full"), "lora": str(store / "ppo-lora")},
                         dtype=torch.bfloat16)
    settings = GenerationSettings(max_new_tokens=6, greedy=True)
    answers, last_logits = {}, {}
    for name in ("base", "full", "lora"):
        with policies.use(name) as (model, tokenizer), torch.no_grad():
            assert next(p for n, p in model.named_parameters() if "lora_" not in n).dtype == torch.bfloat16
            last_logits[name] = model(input_ids=torch.tensor([[1, 5, 9, 13]], device=model.device)).logits[0, -1].float()
            stream = stream_generate(model, tokenizer, "Say something.", settings)
            try:
                while True:
                    next(stream)
            except StopIteration as done:
                answers[name] = done.value
    assert all(a.num_tokens > 0 for a in answers.values())
    assert torch.isfinite(last_logits["lora"]).all()
    assert (last_logits["lora"] - last_logits["base"]).abs().max() > 1e-2  # the adapter is applied


def test_the_hardware_line_names_the_vector_features_and_an_emulated_host(monkeypatch):
    """Cards and benchmark rows name the CPU's vector features, and say when they are capped or replaced."""
    from rlhflab.models.hardware import hardware_description

    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 fma")
    assert "[AVX2 (emulated)]" in hardware_description()
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16")
    assert "[AVX-512 + AVX512-BF16 (emulated)]" in hardware_description()


def test_a_card_names_the_precision_actually_used_not_the_flag(monkeypatch):
    """On a CPU without native bf16 a run asked for bf16 runs fp32, and its card says so (with the vector features)."""
    import torch

    from rlhflab.store.cards import how_it_was_made

    if torch.cuda.is_available():
        pytest.skip("the precision follows the GPU here, not the CPU's flags")
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx avx2 fma")
    line = how_it_was_made(12.3, bf16_asked=True)
    assert "in 12 s on" in line and "[AVX2 (emulated)]" in line
    assert line.endswith("precision: fp32 (bf16 was asked for; this machine has no fast bf16).")
    assert how_it_was_made(1, bf16_asked=False).endswith("precision: fp32.")
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16 amx_bf16")
    assert how_it_was_made(1, bf16_asked=True).endswith("precision: bf16 autocast.")
