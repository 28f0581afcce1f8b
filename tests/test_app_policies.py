"""The app with every method's policy in the store (base, SFT, PPO full and LoRA, DPO full and LoRA, GRPO): each is
found by its card, offered in chat, any 2-4 side by side, and every run that logged metrics is drawn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_app import (
    _write_jsonl,
    chat_args,
    compare_args,
    make_client,
    running_app,
    text_of,
    write_tiny_checkpoints,
)

SEVEN = ["base", "sft", "full", "lora", "dpo", "dpo-lora", "grpo"]


def _card(folder: Path, method: str, mode: str, base: str) -> None:
    from rlhflab.store.cards import CARD_KEY, write_model_card
    from rlhflab.training.policy import policy_metadata

    write_model_card(folder, {"base_model": base, CARD_KEY: policy_metadata(method, mode, base, None)},
                     f"Tiny {method} ({mode})", {"What this is": "Test fixture."})


def write_policy(folder: Path, tiny_llama_dir: Path, method: str, seed: int, metrics: list[dict]) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    _write_jsonl(folder / "metrics.jsonl", metrics)
    _card(folder, method, "full", str(tiny_llama_dir))


def write_adapter(folder: Path, tiny_llama_dir: Path, method: str, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama_dir), config).save_pretrained(folder)
    cfg_path = folder / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": str(tiny_llama_dir)}))
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    _write_jsonl(folder / "metrics.jsonl", [{"step": i + 1, "loss": 0.69 - 0.05 * i, "reward_margin": 0.1 * i,
                                             "preference_accuracy": 0.5 + 0.1 * i, "kl_per_token": 0.001 * i}
                                            for i in range(4)])
    _card(folder, method, "lora", str(tiny_llama_dir))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_dir) -> Path:
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("seven"), tiny_llama_dir, kinds=("reward", "full", "lora"))
    write_policy(root / "sft", tiny_llama_dir, "sft", 11, [{"step": i + 1, "loss": 3.0 - 0.2 * i} for i in range(5)])
    write_policy(root / "dpo", tiny_llama_dir, "dpo", 12,
                 [{"step": i + 1, "loss": 0.69 - 0.04 * i, "reward_margin": 0.2 * i, "preference_accuracy": 0.5 + 0.1 * i,
                   "kl_per_token": 0.002 * i} for i in range(5)])
    write_policy(root / "grpo", tiny_llama_dir, "grpo", 13,
                 [{"step": i + 1, "episode": 16 * (i + 1), "kl_per_token": 0.01 * i, "kl_per_sequence": 0.3 * i,
                   "kl_coef": 0.1, "score": 0.2 * i, "response_tokens_mean": 30.0} for i in range(4)])
    write_adapter(root / "dpo-lora", tiny_llama_dir, "dpo", 14)
    (root / "notes").mkdir()  # a folder that is no checkpoint is ignored
    return root


@pytest.fixture(scope="module")
def app(store, tiny_llama_dir):
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    with running_app(env) as (registry, url):
        yield registry, make_client(url), url


def test_every_policy_is_found_by_its_card_in_method_order(app):
    registry, *_ = app
    assert registry.policy_keys() == SEVEN
    labels = [registry.policy_label(k) for k in SEVEN]
    assert labels == ["Base model", "SFT", "Full PPO", "LoRA PPO", "DPO", "LoRA DPO", "GRPO"]
    assert registry.missing_policies() == []
    # adapters trained on the base share its weights; full checkpoints run on their own
    assert {k: registry.policy_group(k) for k in SEVEN} == {
        "base": "base", "sft": "sft", "full": "full", "lora": "base", "dpo": "dpo", "dpo-lora": "base", "grpo": "grpo"}


def test_chat_answers_with_every_policy(app):
    _, c, _ = app
    answers = {}
    for key in SEVEN:
        chatbot, details, _ = c.predict(*chat_args("Name a colour.", key, max_new_tokens=6), api_name="/chat")
        assert details["error"] is None and details["answer"], (key, details)
        assert isinstance(details["reward"], float)
        answers[key] = details["answer"]
    assert len(set(answers.values())) >= 5, f"different weights should answer differently: {answers}"


def test_any_four_side_by_side_including_two_adapters_on_one_base(app):
    _, _, url = app
    c = make_client(url)
    chosen = ["lora", "dpo-lora", "base", "grpo"]
    *sides, details, box = c.predict(*compare_args("Tell me a fact.", chosen, greedy=True), api_name="/compare")
    assert set(details) == set(chosen) and box == ""
    for cb, key in zip(sides, chosen):
        assert text_of(cb[-2]) == "Tell me a fact." and details[key]["error"] is None
        assert text_of(cb[-1]).startswith(details[key]["answer"][:10])
    # greedy: the same weights give the same answer, so the three on the shared base must each be switched right
    assert len({details[k]["answer"] for k in ("lora", "dpo-lora", "base")}) == 3
    # they decoded as rows of one batch in the base's decode loop, each row with its own adapter; GRPO in its own
    registry = app[0]
    servers = registry.policies._servers
    assert set(servers) >= {"base", "grpo"} and max(servers["base"].stats.batch_sizes) >= 2
    fresh = make_client(url)  # a new session: no earlier turns in the conversations
    *_, again, _ = fresh.predict(*compare_args("Tell me a fact.", ["base", "dpo-lora"], greedy=True),
                                 api_name="/compare")
    assert again["base"]["answer"] == details["base"]["answer"]
    assert again["dpo-lora"]["answer"] == details["dpo-lora"]["answer"]


@pytest.mark.parametrize("chosen, why", [(["base"], "Choose 2 to 4"), (SEVEN[:5], "Choose 2 to 4"),
                                         (["base", "nope"], "unknown policy 'nope'")])
def test_side_by_side_refuses_a_bad_selection(app, chosen, why):
    _, c, _ = app
    with pytest.raises(Exception, match=why):
        c.predict(*compare_args("Hi", chosen), api_name="/compare")


def test_curves_draw_grpo_beside_ppo_and_dpo_sft_in_their_own_plot(app):
    _, c, _ = app
    plot, summary, notice = c.predict("step", "token", api_name="/kl_curves")
    names = {t.get("name") for t in (json.loads(plot["plot"]) if isinstance(plot["plot"], str) else plot["plot"])["data"]}
    assert {"ppo-full KL", "ppo-lora KL", "grpo KL", "grpo score"} <= names and "grpo" in summary
    plot, summary, notice = c.predict(api_name="/method_curves")
    names = {t.get("name") for t in (json.loads(plot["plot"]) if isinstance(plot["plot"], str) else plot["plot"])["data"]}
    assert {"sft loss", "dpo reward margin", "dpo preference accuracy", "dpo-lora kl per token"} <= names
    assert "dpo" in summary and "0.690 → 0.530" in summary


def test_hub_policy_repos_are_listed_and_fail_on_their_own(tmp_path, tiny_llama_dir, store):
    from space.registry import CheckpointUnavailable, Registry

    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1",
           "RLHFLAB_POLICY_REPOS": "someone/my-dpo-run, someone/sft"}
    registry = Registry(env=env)
    keys = registry.policy_keys()
    assert keys[:len(SEVEN)] == SEVEN or set(SEVEN) <= set(keys)
    assert "my-dpo-run" in keys and "someone--sft" in keys, keys  # a name the store already uses keeps the repo's
    assert registry.resolve("my-dpo-run").origin == "hub"
    with pytest.raises(CheckpointUnavailable, match=r"someone/my-dpo-run.*could not be loaded"):
        with registry.policy("my-dpo-run"):
            pass
    with registry.policy("dpo") as (model, _):
        assert model is not None


def test_missing_methods_are_named_with_their_commands(tmp_path, tiny_llama_dir):
    from space.chat import chat_notice
    from space.registry import Registry

    registry = Registry(env={"RLHFLAB_CHECKPOINTS": str(tmp_path), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir)})
    assert registry.policy_keys() == ["base"]
    notice = chat_notice(registry)
    for command in ("training/sft.py", "training/ppo.py --mode lora", "training/dpo.py", "training/grpo.py"):
        assert command in notice


def test_status_line_follows_the_background_pipeline(tmp_path, tiny_llama_dir):
    from space.registry import Registry
    from space.status import pipeline_status_markdown

    registry = Registry(env={"RLHFLAB_CHECKPOINTS": str(tmp_path), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir)})
    assert pipeline_status_markdown(registry) == ""  # no pipeline: no line
    path = tmp_path / "logs" / "pipeline_status.json"
    path.parent.mkdir()
    status = {"updated": 1000.0, "done": False, "failed": [], "finished": ["reward"],
              "running": [{"name": "PPO (full)", "started": 880.0, "expected_s": 300},
                          {"name": "GRPO", "started": 940.0, "expected_s": None}],
              "pending": [{"name": "evaluation", "expected_s": 240}]}
    path.write_text(json.dumps(status))
    text = pipeline_status_markdown(registry, now=1000.0)
    assert "**PPO (full)** (2:00 of ~5:00)" in text and "**GRPO** (1:00 so far)" in text
    assert "waiting: evaluation" in text and "about 5 min left" in text  # 180 s + 240 s / 2 jobs
    # the pipeline's own simulation of its schedule, when the file has it, counted from when it was written
    path.write_text(json.dumps({**status, "remaining_total_s": 900.0}))
    assert "about 14 min left" in pipeline_status_markdown(registry, now=1060.0)  # 900 s - 60 s
    late = {**status, "remaining_total_s": None, "pending": [],
            "running": [{"name": "evaluation", "started": 0.0, "expected_s": 940.0, "remaining_s": None}]}
    path.write_text(json.dumps(late))  # past its expected time, no progress to project from: no invented minutes
    text = pipeline_status_markdown(registry, now=1000.0)
    assert "**evaluation** (16:40, longer than the ~15:40 expected)" in text and "min left" not in text
    path.write_text(json.dumps(status))
    assert pipeline_status_markdown(registry, now=1000.0 + 600) == ""  # a pipeline that stopped writing is gone
    path.write_text(json.dumps({**status, "done": True, "running": [], "pending": [], "failed": ["dpo"]}))
    assert "dpo" in pipeline_status_markdown(registry, now=1001.0) and "failures" in pipeline_status_markdown(
        registry, now=1001.0)


def test_a_checkpoint_the_pipeline_is_training_says_so_instead_of_missing(tmp_path, tiny_llama_dir):
    """While the background pipeline builds a checkpoint, its tab says 'training now, about N min left' (or queued),
    not 'missing, create it with ...'; once no pipeline runs, the usual instructions come back."""
    import time

    from space.registry import Registry

    registry = Registry(env={"RLHFLAB_CHECKPOINTS": str(tmp_path), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir)})
    path = tmp_path / "logs" / "pipeline_status.json"
    path.parent.mkdir()
    now = time.time()
    path.write_text(json.dumps({"updated": now, "done": False, "failed": [], "finished": [],
                                "running": [{"name": "reward model", "output": "reward", "started": now - 60,
                                             "expected_s": 300, "remaining_s": 240}],
                                "pending": [{"name": "DCGAN", "output": "dcgan", "expected_s": 50}]}))
    assert "training now, about 4 min left" in registry.notice("reward") and "Create it" not in registry.notice("reward")
    assert "queued for training" in registry.notice("dcgan")
    path.write_text(json.dumps({"updated": now - 3600, "done": False, "running": [], "pending": []}))
    assert "python training/reward.py" in registry.notice("reward")
