"""Evaluate a reward model on its held-out test pairs: `python eval/reward_model.py --help`.

The test pairs are the ones the checkpoint's split.json names (never trained on, never used to pick the epoch).
Accuracy with a 95 % interval, the 'longer wins' baseline, accuracy split by length, reward-length
correlation; writes reward_eval.json beside the checkpoint (or to --output). With --judge-model, a second reward
model (the independent judge) is evaluated on the same pairs and both accuracies are shown side by side with
their paired difference:

    python eval/reward_model.py --reward-model checkpoints/reward --judge-model checkpoints/judge
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import RewardEvalConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(RewardEvalConfig, argv, description=__doc__)
    from rlhflab.reward_training import evaluate_reward_checkpoint

    return evaluate_reward_checkpoint(cfg)


if __name__ == "__main__":
    main()
