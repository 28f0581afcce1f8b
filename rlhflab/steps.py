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
    demo_s: float | None = None  # expected seconds in the demo profile on a 2-core CPU with native bf16
    demo_s_fp32: float | None = None  # the same on a 2-core CPU without it (every step fp32; for the status line)
    key: str | None = None  # the app's name for the checkpoint (default: the folder name)
    method: str | None = None  # the policy method when the step trains a policy
    takes_base_model: bool = True  # its script has --base-model (every step but the DCGAN's)

    def expected_s(self, profile: str, fp32_host: bool) -> float | None:
        """The profile's expected seconds for this step on this kind of host (None outside the demo profile)."""
        if profile != "demo":
            return None
        return self.demo_s_fp32 if fp32_host and self.demo_s_fp32 else self.demo_s

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

# The scheduler offers free cores to the ready step with the longest chain of expected time to the end
# (rlhflab.pipeline.critical_path_first: the reward model, then GRPO and the PPO runs that wait for it); this order
# breaks ties and holds where no times are known (the spec profile): the reward model first since the RL runs wait
# for it, the judge beside it (it trains on the other side of the pairs and only the evaluation reads it), the
# DCGAN last, beside the evaluation. demo_s: each step's time beside one other
# step in the demo profile, as `make demo` run 10 measured it (Intel Xeon with AMX, 2026-12-06, the budgets of
# issue 25: bench/make_demo/run10/demo.log); demo_s_fp32: the same work on a CPU without native bf16, run 12 (AMD
# EPYC with AVX2 only, 2026-12-07, the evaluation's passes without unread work: bench/make_demo/run12/demo.log).
# Their ratio is not one constant (SFT 2.4x, GRPO 3.8x, DPO 3.3x: decoding loses more than training without bf16),
# so one speed factor cannot map one table onto the other host; the pipeline rescales its host's table by the speed
# it measures. The evaluation's bf16 time is run 10's, from before its passes stopped doing unread work (on the AVX2
# host they went from 1,452 s to 719 s); not yet re-measured on a bf16 host.
STEPS = [
    Step("reward model", "training/reward.py", [], "reward", "reward_eval.json", "reward",
         stand_in=_SPLIT_STAND_IN, demo_s=86, demo_s_fp32=269),
    Step("judge", "training/reward.py", ["--role", "judge"], "judge", "reward_eval.json", "judge",
         stand_in=_SPLIT_STAND_IN, demo_s=185, demo_s_fp32=613),
    Step("SFT", "training/sft.py", [], "sft", "policy_info.json", "sft", stand_in=_HH_STAND_IN, demo_s=76,
         demo_s_fp32=181, method="sft"),
    Step("PPO (full)", "training/ppo.py", ["--mode", "full"], "ppo-full", "ppo_info.json", "ppo-full", ["reward"],
         stand_in=_OASST_STAND_IN, demo_s=281, demo_s_fp32=879, key="full", method="ppo"),
    Step("PPO (LoRA)", "training/ppo.py", ["--mode", "lora"], "ppo-lora", "ppo_info.json", "ppo-lora", ["reward"],
         stand_in=_OASST_STAND_IN, demo_s=273, demo_s_fp32=737, key="lora", method="ppo"),
    Step("GRPO", "training/grpo.py", [], "grpo", "policy_info.json", "grpo", ["reward"], stand_in=_OASST_STAND_IN,
         demo_s=320, demo_s_fp32=1214, method="grpo"),
    Step("DPO", "training/dpo.py", [], "dpo", "policy_info.json", "dpo", stand_in=_HH_STAND_IN, demo_s=106,
         demo_s_fp32=352, method="dpo"),
    Step("DCGAN", "training/dcgan.py", [], "dcgan", "config.json", "dcgan", ["reward"],
         stand_in=["--allow-phantom", "--no-download"], demo_s=63, demo_s_fp32=108, takes_base_model=False),
    Step("evaluation", "eval/evaluate.py", [], "eval", "report.md", None,
         ["reward", "judge", "sft", "ppo-full", "ppo-lora", "grpo", "dpo"], demo_s=312, demo_s_fp32=719),
]


def step_making(output: str) -> Step:
    """The step whose checkpoint folder is `output`."""
    return next(s for s in STEPS if s.output == output)


def policy_steps() -> list[Step]:
    """The steps that train a policy, in the order the app and the report list methods (POLICY_METHODS)."""
    order = list(POLICY_METHODS)
    return sorted((s for s in STEPS if s.method), key=lambda s: order.index(s.method))
