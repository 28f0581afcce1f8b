"""The one adapter over TRL 1.12's PPOTrainer (`trl.experimental.ppo`), where TRL offers no extension point.

TRL's PPO loop (`PPOTrainer.train`) generates rollouts, runs its forward passes and scores with the reward and value
models through module-level functions (`batch_generation`, `forward`, `get_reward`), which neither a subclass nor a
callback can reach. `HookablePPOTrainer.train` runs TRL's own loop code unchanged with those three names bound to
methods of the trainer, whose defaults call TRL's functions; a subclass overrides the methods. TRL's module itself
is never modified, so any other PPOTrainer in the process behaves as TRL wrote it.

This depends on the exact code of those functions: TRL_SOURCES holds a hash of each, and
tests/test_trl_adapters.py fails when the installed TRL differs, so that a TRL upgrade is checked here first."""
from __future__ import annotations

import functools
import hashlib
import inspect
import types

HOOKS = ("batch_generation", "forward", "get_reward")  # the loop's globals routed to trainer methods

# sha256 (first 16 hex digits) of inspect.getsource of what the adapter relies on, in trl==1.12.0
TRL_SOURCES = {
    "PPOTrainer.train": "34134a152c900844",
    "batch_generation": "7ad7b5622d759c6d",
    "forward": "260b10d0105cef8d",
    "get_reward": "ca26a8e72ce2726d",
    "truncate_response": "363c5833969219f8",
    "first_true_indices": "7104ec34cf038dae",
}


def trl_ppo_module():
    """TRL's PPO trainer module (imported on first use: TRL warns about its experimental namespace on import)."""
    from trl.experimental.ppo import ppo_trainer

    return ppo_trainer


def source_hashes() -> dict[str, str]:
    """The TRL_SOURCES hashes of the installed TRL."""
    module = trl_ppo_module()
    found = {"PPOTrainer.train": module.PPOTrainer.train}
    found.update({name: getattr(module, name) for name in TRL_SOURCES if name != "PPOTrainer.train"})
    return {name: hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16] for name, fn in found.items()}


@functools.cache
def hookable_ppo_trainer() -> type:
    """TRL's PPOTrainer with its loop's module-level helpers as overridable methods."""
    module = trl_ppo_module()

    class HookablePPOTrainer(module.PPOTrainer):
        """PPOTrainer whose rollout generation, forward passes and reward/value scoring are the methods below."""

        def batch_generation(self, model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
            """(query_responses, logits of the response positions / temperature) of a batch of queries."""
            return module.batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id,
                                           generation_config)

        def forward(self, model, query_responses, pad_token_id):
            """A forward pass of the reference (an output) or of the policy+value wrapper (a pair)."""
            return module.forward(model, query_responses, pad_token_id)

        def get_reward(self, model, query_responses, pad_token_id, context_length):
            """(per-position values, sequence scores, sequence lengths) from the reward or the value model."""
            return module.get_reward(model, query_responses, pad_token_id, context_length)

        def train(self):
            loop = module.PPOTrainer.train
            scope = {**loop.__globals__, **{name: getattr(self, name) for name in HOOKS}}
            hooked = types.FunctionType(loop.__code__, scope, loop.__name__, loop.__defaults__, loop.__closure__)
            return hooked(self)

    return HookablePPOTrainer
