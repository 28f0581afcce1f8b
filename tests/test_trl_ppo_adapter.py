"""The adapter over TRL's PPO loop (rlhflab.training.trl_ppo) relies on TRL's exact code: this fails when the
installed TRL differs from the one the adapter was written against, and checks that TRL's module is left as it was."""
from rlhflab.training.trl_ppo import HOOKS, TRL_SOURCES, hookable_ppo_trainer, source_hashes, trl_ppo_module


def test_trl_code_under_the_adapter_is_the_one_it_was_written_for():
    changed = {name: h for name, h in source_hashes().items() if TRL_SOURCES[name] != h}
    assert not changed, (f"TRL's {sorted(changed)} changed: re-read them against rlhflab/training/trl_ppo.py and "
                         f"rlhflab/training/ppo.py's LabPPOTrainer, then update TRL_SOURCES")


def test_the_loop_looks_the_hooked_helpers_up_as_globals_and_the_module_is_untouched():
    module = trl_ppo_module()
    originals = {name: getattr(module, name) for name in HOOKS}
    assert set(HOOKS) <= set(module.PPOTrainer.train.__code__.co_names)
    assert module.PPOTrainer.train.__closure__ is None  # rebuilt with new globals, it needs no cells
    trainer = hookable_ppo_trainer()
    assert issubclass(trainer, module.PPOTrainer) and all(callable(getattr(trainer, name)) for name in HOOKS)
    assert {name: getattr(module, name) for name in HOOKS} == originals
