"""What the lab builds: one map of step -> checkpoint folder -> command that makes it. The pipeline's scheduler
(rlhflab.pipeline) runs these steps; the app (space/registry.py) names their folders and tells a visitor which
command makes a missing checkpoint."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from rlhflab.config import DEMO_DATA_DIR, REPO_ROOT
from rlhflab.store.cards import POLICY_METHODS


@dataclass
class Step:
    name: str
    script: str
    args: list[str]
    output: str  # checkpoint folder name under checkpoints/
    done_file: str  # present when the step finished
    hub_suffix: str | None = None
    after: list[str] = field(default_factory=list)  # outputs of the steps this one needs
    stand_in: list[str] = field(default_factory=list)  # flags that point the step at the embedded stand-in data
    demo_s: float | None = None  # expected seconds in the demo profile on a 2-core CPU (for the status line)
    key: str | None = None  # the app's name for the checkpoint (default: the folder name)
    method: str | None = None  # the policy method when the step trains a policy
    takes_base_model: bool = True  # its script has --base-model (every step but the DCGAN's)

    def command(self, profile: str, extra: list[str]) -> list[str]:
        return [sys.executable, str(REPO_ROOT / self.script), "--profile", profile, *self.args, *extra]

    @property
    def demo_command(self) -> str:
        """The command a person types to make this checkpoint on a CPU (the app's instruction)."""
        return " ".join(["python", self.script, *self.args, "--profile", "demo"])

    @property
    def app_key(self) -> str:
        return self.key or self.output


_OASST_STAND_IN = ["--dataset", str(DEMO_DATA_DIR / "oasst1.jsonl"), "--lang", "en"]  # the RL runs' prompts
_HH_STAND_IN = ["--dataset", str(DEMO_DATA_DIR / "hh_rlhf.jsonl")]  # the preference pairs
# The reward model and the judge must share one test part: the same size, whatever the profile.
_SPLIT_STAND_IN = [*_HH_STAND_IN, "--test-size", "64", "--dev-size", "20"]

# In priority order: with two jobs, the first two ready steps start; the reward model comes first since the RL
# runs wait for it, the judge beside it (it trains on the other side of the pairs and only the evaluation reads
# it). The DCGAN needs nothing and goes last, beside the evaluation. demo_s: each step's time beside one other
# step in the demo profile, as `make demo` run 10 measured it (Intel Xeon with AMX, 2026-12-06, the budgets of
# issue 25: bench/make_demo/run10/demo.log); the pipeline rescales them by the host's measured speed.
STEPS = [
    Step("reward model", "training/reward.py", [], "reward", "reward_eval.json", "reward",
         stand_in=_SPLIT_STAND_IN, demo_s=86),
    Step("judge", "training/reward.py", ["--role", "judge"], "judge", "reward_eval.json", "judge",
         stand_in=_SPLIT_STAND_IN, demo_s=185),
    Step("SFT", "training/sft.py", [], "sft", "policy_info.json", "sft", stand_in=_HH_STAND_IN, demo_s=76,
         method="sft"),
    Step("PPO (full)", "training/ppo.py", ["--mode", "full"], "ppo-full", "ppo_info.json", "ppo-full", ["reward"],
         stand_in=_OASST_STAND_IN, demo_s=281, key="full", method="ppo"),
    Step("PPO (LoRA)", "training/ppo.py", ["--mode", "lora"], "ppo-lora", "ppo_info.json", "ppo-lora", ["reward"],
         stand_in=_OASST_STAND_IN, demo_s=273, key="lora", method="ppo"),
    Step("GRPO", "training/grpo.py", [], "grpo", "policy_info.json", "grpo", ["reward"], stand_in=_OASST_STAND_IN,
         demo_s=320, method="grpo"),
    Step("DPO", "training/dpo.py", [], "dpo", "policy_info.json", "dpo", stand_in=_HH_STAND_IN, demo_s=106,
         method="dpo"),
    Step("DCGAN", "training/dcgan.py", [], "dcgan", "config.json", "dcgan", ["reward"],
         stand_in=["--allow-phantom", "--no-download"], demo_s=63, takes_base_model=False),
    Step("evaluation", "eval/evaluate.py", [], "eval", "report.md", None,
         ["reward", "judge", "sft", "ppo-full", "ppo-lora", "grpo", "dpo"], demo_s=312),
]


def step_making(output: str) -> Step:
    """The step whose checkpoint folder is `output`."""
    return next(s for s in STEPS if s.output == output)


def policy_steps() -> list[Step]:
    """The steps that train a policy, in the order the app and the report list methods (POLICY_METHODS)."""
    order = list(POLICY_METHODS)
    return sorted((s for s in STEPS if s.method), key=lambda s: order.index(s.method))
