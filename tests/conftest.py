"""Shared fixtures: tiny Llama-style and GPT-2-style models built from configs (2 layers, hidden 64).

The tokenizer is the embedded SmolLM2 tokenizer read straight from the GGUF (no weights are
de-quantised); the GPT-2-style variant drops the chat template and pad token, as GPT-2 has none.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    from rlhflab.models.loading import EMBEDDED_MODELS, embedded_gguf

    gguf = embedded_gguf("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=EMBEDDED_MODELS["smollm2-135m-instruct"][1])
    out = tmp_path_factory.mktemp("smol-tokenizer")
    tok.save_pretrained(out)
    return out


def _save_tiny(out: Path, model, tokenizer_dir: Path, gpt2_style: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if gpt2_style:
        tok.chat_template = None
        tok.pad_token = None
        tok.eos_token = "<|endoftext|>"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if gpt2_style:  # make sure no chat template survives in the saved files
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("chat_template", None)
        cfg_path.write_text(json.dumps(cfg))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config), smol_tokenizer_dir, False)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=49152, n_embd=64, n_layer=2, n_head=4, n_positions=1024,
                        bos_token_id=0, eos_token_id=0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config), smol_tokenizer_dir, True)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model_dir(request, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    return tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir


def hh_row(prompt_turns: list[str], chosen: str, rejected: str) -> dict:
    """A row in hh-rlhf's exact format from alternating human/assistant turns (last is human)."""
    prefix = ""
    for i, turn in enumerate(prompt_turns):
        prefix += ("\n\nHuman: " if i % 2 == 0 else "\n\nAssistant: ") + turn
    prefix += "\n\nAssistant:"
    return {"chosen": prefix + " " + chosen, "rejected": prefix + " " + rejected}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- tiny PPO runs shared by the PPO, evaluation and app tests
def oasst_rows(texts):
    return [{"message_id": f"m{i}", "parent_id": None, "user_id": "u", "created_date": "2023-01-01T00:00:00+00:00",
             "text": t, "role": "prompter", "lang": "en", "review_count": 3, "review_result": True, "deleted": False,
             "rank": None, "synthetic": False, "model_name": None, "detoxify": None, "message_tree_id": f"m{i}",
             "tree_state": "ready_for_export", "emojis": None, "labels": None} for i, t in enumerate(texts)]


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    texts = [f"Tell me one thing about topic number {i}." for i in range(24)]
    return str(write_jsonl(tmp_path_factory.mktemp("p") / "oasst.jsonl", oasst_rows(texts)))


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_llama_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    out = tmp_path_factory.mktemp("tiny-reward")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


def tiny_cfg(tmp_path, mode, base, reward, prompts, **kw):
    from rlhflab.config import PPOConfig, build_config

    values = dict(mode=mode, base_model=str(base), reward_model=str(reward), dataset=prompts, lang=None,
                  num_prompts=16, num_heldout=4, batch_size=4, mini_batch_size=2, ppo_epochs=1, epochs=1,
                  max_prompt_length=64, max_response_length=8, lr=1e-3, max_steps=2, bf16=False,
                  output_dir=str(tmp_path / f"ppo-{mode}"), kl_horizon=100, lora_lr=None,
                  judge_model="",  # never the developer's real checkpoints/judge
                  probe_max_new_tokens=None)  # the probe answers as long as the rollouts (8), not the demo's 192
    values.update(kw)
    return build_config(PPOConfig, "demo", **values)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.training.ppo import train_ppo
    tmp = tmp_path_factory.mktemp("full")
    return train_ppo(tiny_cfg(tmp, "full", tiny_llama_dir, tiny_reward_dir, prompts_file))


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_llama_dir, tiny_reward_dir, prompts_file):
    from rlhflab.training.ppo import train_ppo
    tmp = tmp_path_factory.mktemp("lora")
    return train_ppo(tiny_cfg(tmp, "lora", tiny_llama_dir, tiny_reward_dir, prompts_file))


