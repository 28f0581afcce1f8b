"""Evaluate a reward model on held-out preference pairs: `python eval/reward_model.py --help`.

Accuracy with a 95 % interval, the 'longer wins' baseline, accuracy split by length, reward-length
correlation; writes reward_eval.json beside the checkpoint (or to --output).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import CHECKPOINTS_DIR, RewardConfig, profile_defaults  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=("spec", "demo"), default="spec")
    parser.add_argument("--reward-model", default=str(CHECKPOINTS_DIR / "reward"))
    parser.add_argument("--dataset", default=None, help="hh-rlhf id or local file (default: the profile's)")
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42, help="the training run's seed selects the same held-out pairs")
    parser.add_argument("--output", default=None, help="results JSON (default: <reward-model>/reward_eval.json)")
    args = parser.parse_args(argv)
    defaults = profile_defaults(RewardConfig, args.profile)
    from rlhflab.checkpoints import write_json
    from rlhflab.data.hh_rlhf import train_val_pairs
    from rlhflab.models import load_reward_model
    from rlhflab.reward_training import evaluate_reward_model, reward_eval_markdown

    _, val = train_val_pairs(args.dataset or defaults["dataset"], defaults["train_size"],
                             args.val_size or defaults["val_size"], args.seed)
    model, tok = load_reward_model(args.reward_model)
    ev = evaluate_reward_model(model, tok, val.pairs, defaults["max_length"])
    print(reward_eval_markdown(ev))
    out = Path(args.output) if args.output else Path(args.reward_model) / "reward_eval.json"
    write_json(out, ev)
    print(f"written {out}")


if __name__ == "__main__":
    main()
