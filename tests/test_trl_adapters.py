"""The adapter over TRL's PPO loop (rlhflab.training.trl_ppo) and GRPO/RLOO's overrides of TRL's private methods
(rlhflab.training.grpo.lab_grpo_trainer) rely on TRL's exact code: this fails when the installed TRL differs from the
one they were written against, and checks that TRL's module is left as it was."""
from rlhflab.training.trl_ppo import HOOKS, TRL_SOURCES, hookable_ppo_trainer, source_hashes, trl_ppo_module


def test_trl_code_under_the_adapter_is_the_one_it_was_written_for():
    changed = {name: h for name, h in source_hashes().items() if TRL_SOURCES[name] != h}
    assert not changed, (f"TRL's {sorted(changed)} changed: re-read them against rlhflab/training/trl_ppo.py and "
                         f"rlhflab/training/ppo.py's LabPPOTrainer, then update TRL_SOURCES")


def test_trl_private_methods_grpo_overrides_are_the_ones_it_was_written_for():
    import hashlib
    import inspect

    import trl

    from rlhflab.training.grpo import TRL_OVERRIDDEN

    found = {}
    for name in TRL_OVERRIDDEN:
        cls, method = name.split(".")
        found[name] = hashlib.sha256(inspect.getsource(getattr(getattr(trl, cls), method)).encode()).hexdigest()[:16]
    changed = sorted(name for name in TRL_OVERRIDDEN if found[name] != TRL_OVERRIDDEN[name])
    assert not changed, (f"TRL's {changed} changed: re-read rlhflab/training/grpo.py's lab_grpo_trainer, then "
                         f"TRL_OVERRIDDEN")


def test_the_loop_looks_the_hooked_helpers_up_as_globals_and_the_module_is_untouched():
    module = trl_ppo_module()
    originals = {name: getattr(module, name) for name in HOOKS}
    assert set(HOOKS) <= set(module.PPOTrainer.train.__code__.co_names)
    assert module.PPOTrainer.train.__closure__ is None  # rebuilt with new globals, it needs no cells
    trainer = hookable_ppo_trainer()
    assert issubclass(trainer, module.PPOTrainer) and all(callable(getattr(trainer, name)) for name in HOOKS)
    assert {name: getattr(module, name) for name in HOOKS} == originals


def test_a_subclass_passed_as_trainer_class_sees_every_hook_and_can_set_trls_arguments(
        tmp_path, tiny_llama_dir, tiny_reward_dir, prompts_file):
    """How a benchmark swaps a part: a subclass of lab_ppo_trainer() given to train_ppo (its documented argument)."""
    import json

    from conftest import tiny_cfg

    from rlhflab.training.ppo import lab_ppo_trainer, train_ppo

    calls = {name: 0 for name in HOOKS}
    seen_args = {}

    class Counting(lab_ppo_trainer()):
        def __init__(self, *args, **kwargs):
            kwargs["args"].missing_eos_penalty = 0.5  # a TRL argument the lab's config would not set this way
            super().__init__(*args, **kwargs)
            seen_args["missing_eos_penalty"] = self.args.missing_eos_penalty

        def batch_generation(self, *args):
            calls["batch_generation"] += 1
            return super().batch_generation(*args)

        def forward(self, *args):
            calls["forward"] += 1
            return super().forward(*args)

        def get_reward(self, *args):
            calls["get_reward"] += 1
            return super().get_reward(*args)

    out = train_ppo(tiny_cfg(tmp_path, "full", tiny_llama_dir, tiny_reward_dir, prompts_file, max_steps=1,
                             probe_every=0), trainer_class=Counting)
    # one step of 4 rollouts in chunks of 2: one generation, a reference forward per chunk (plus the training
    # passes), a value and a reward call per chunk
    assert calls["batch_generation"] == 1 and calls["forward"] >= 2 and calls["get_reward"] == 4
    assert seen_args == {"missing_eos_penalty": 0.5}
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert len(record["rollout_scores"]) == 4 and abs(record["kl_exact_per_token"]) < 1e-6
