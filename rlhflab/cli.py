"""The lab's command lines, one function each: parse the config (so --help answers before torch loads), then call
one library function. `python training/ppo.py` and the console script `rlhflab-train-ppo` run the same function."""
from __future__ import annotations

import os

from rlhflab.config import (
    DEMO_BASE_MODEL,
    SPEC_BASE_MODEL,
    DCGANConfig,
    DPOConfig,
    EvalConfig,
    GANEvalConfig,
    GRPOConfig,
    PPOConfig,
    RewardConfig,
    RewardEvalConfig,
    SFTConfig,
    parse_config,
)
from rlhflab.errors import UserError, cli_main


def require_base_model(cfg) -> None:
    """Stop at once (before any data or model loads) when the spec profile's default base model cannot load here:
    not in the local HF cache and no Hub to fetch it from."""
    if cfg.base_model == SPEC_BASE_MODEL and cfg.profile == "spec":
        from rlhflab.store.hub import hub_model_available

        if not hub_model_available(SPEC_BASE_MODEL):
            raise UserError(f"the spec profile's base model {SPEC_BASE_MODEL} is not in the local Hugging Face cache "
                            f"and the Hub cannot be reached: pass --base-model {DEMO_BASE_MODEL} (the embedded model) "
                            f"or use --profile demo.")


@cli_main
def train_reward(argv=None):
    """Train a reward model on preference pairs (hh-rlhf or a file in its format): `python training/reward.py --help`."""
    cfg = parse_config(RewardConfig, argv, description=train_reward.__doc__)
    require_base_model(cfg)
    from rlhflab.training.reward import train_reward_model as run

    return run(cfg)


@cli_main
def train_sft(argv=None):
    """SFT of a policy on the chosen responses of preference pairs: `python training/sft.py --mode full|lora --help`."""
    cfg = parse_config(SFTConfig, argv, description=train_sft.__doc__)
    require_base_model(cfg)
    from rlhflab.training.sft import train_sft as run

    return run(cfg)


@cli_main
def train_ppo(argv=None):
    """PPO fine-tuning of a policy against a frozen reward model: `python training/ppo.py --mode full|lora --help`."""
    cfg = parse_config(PPOConfig, argv, description=train_ppo.__doc__)
    require_base_model(cfg)
    from rlhflab.training.ppo import train_ppo as run

    return run(cfg)


@cli_main
def train_dpo(argv=None):
    """DPO of a policy on preference pairs: `python training/dpo.py --mode full|lora --help`."""
    cfg = parse_config(DPOConfig, argv, description=train_dpo.__doc__)
    require_base_model(cfg)
    from rlhflab.training.dpo import train_dpo as run

    return run(cfg)


@cli_main
def train_grpo(argv=None):
    """GRPO (or RLOO) fine-tuning of a policy against a frozen reward model: `python training/grpo.py --mode full|lora --help`."""
    cfg = parse_config(GRPOConfig, argv, description=train_grpo.__doc__)
    require_base_model(cfg)
    from rlhflab.training.grpo import train_grpo as run

    return run(cfg)


@cli_main
def train_dcgan(argv=None):
    """Train the DCGAN on ChestMNIST (or, where allowed and chestmnist.npz is absent, the PHANTOM stand-in).

    python training/dcgan.py --profile demo             # a few CPU minutes; PHANTOM data unless chestmnist.npz is in --data-root
    python training/dcgan.py                            # the specification: ChestMNIST, batch 128, 1000 epochs
    python training/dcgan.py --resume --epochs 1200     # continue from <output-dir>/training_state

The checkpoint layout is described in rlhflab/gan/training.py; `python training/dcgan.py --help` lists every option.
    """
    cfg = parse_config(DCGANConfig, argv, description=train_dcgan.__doc__.splitlines()[0])
    from rlhflab.gan.training import train_dcgan as run

    return run(cfg)


@cli_main
def evaluate(argv=None):
    """Compare every policy (and best-of-n) with the base on held-out prompts, scored by the training reward model
and by an independent judge (--judge-model; n/a without one): `python eval/evaluate.py --help`.

Writes results.json, report.md, figures/ and the blind-rating items into one folder the app reads;
`--ratings` aggregates the stored human ratings into a policy x criterion table; `--arena` writes the arena's
leaderboard (people's votes) into report.md and results.json; `--export-votes FILE` writes the decided battles as
a TRL preference dataset for `training/dpo.py --dataset FILE` and `training/reward.py --dataset FILE`.
    """
    cfg = parse_config(EvalConfig, argv, description=evaluate.__doc__)
    if cfg.export_votes:
        from rlhflab.measure.leaderboard import export_votes

        n, left_out = export_votes(cfg.votes_db, cfg.export_votes)
        print(f"wrote {n} decided battles to {cfg.export_votes} (TRL preference format); left out "
              f"{left_out['tie']} ties, {left_out['both_bad']} both-bad, {left_out['named_a_model']} that named a model")
        return cfg.export_votes
    if cfg.arena:
        from rlhflab.measure.leaderboard import write_arena_report

        print(write_arena_report(cfg.votes_db, cfg.output_dir))
        return cfg.output_dir
    if cfg.ratings:
        from rlhflab.measure.evaluation import ratings_report

        print(ratings_report(cfg))
        return None
    require_base_model(cfg)
    from rlhflab.measure.evaluation import run_evaluation

    out = run_evaluation(cfg)
    print((out / "report.md").read_text())
    return out


@cli_main
def evaluate_reward_model(argv=None):
    """Evaluate a reward model on its held-out test pairs: `python eval/reward_model.py --help`.

The test pairs are the ones the checkpoint's split.json names (never trained on, never used to pick the epoch).
Accuracy with a 95 % interval, the 'longer wins' baseline, accuracy split by length, reward-length
correlation; writes reward_eval.json beside the checkpoint (or to --output). With --judge-model, a second reward
model (the independent judge) is evaluated on the same pairs and both accuracies are shown side by side with
their paired difference:

    python eval/reward_model.py --reward-model checkpoints/reward --judge-model checkpoints/judge
    """
    cfg = parse_config(RewardEvalConfig, argv, description=evaluate_reward_model.__doc__)
    from rlhflab.training.reward import evaluate_reward_checkpoint as run

    return run(cfg)


@cli_main
def evaluate_gan(argv=None):
    """Diagnostics for a DCGAN generator checkpoint on the data it was trained on: python eval/gan.py [--checkpoint ...]

Diversity (mean pairwise L2, MS-SSIM), memorisation (nearest-training-image distances vs held-out images)
and a Fréchet distance in a small classifier's features (not Inception FID) — the same function the
training script runs at its end. Writes diagnostics.json and prints a table.
    """
    cfg = parse_config(GANEvalConfig, argv, description=evaluate_gan.__doc__.splitlines()[0])
    from rlhflab.gan.diagnostics import evaluate_generator as run

    return run(cfg)


@cli_main
def pipeline(argv=None):
    """Build every checkpoint that is missing — reward model, judge, SFT, PPO full and LoRA, DPO, GRPO, DCGAN, evaluation —
and serve the app: `python training/pipeline.py --profile demo|spec [--serve]`.

Each step runs as its own process (its output goes to checkpoints/logs/<step>.log) under one
progress display; a finished checkpoint is reused, and a failed step keeps the ones before it
and names the command to re-run. With `--jobs 2` (the default on a CPU-only machine) steps that
do not depend on each other run side by side with the CPU threads split between them, which
finishes sooner than running them one after another. With `--serve` the app starts first, on
whatever checkpoints exist, and each tab fills in as its checkpoint lands; the pipeline writes
what is still running (and how long it should take) to checkpoints/logs/pipeline_status.json,
which the app shows.
    """
    import argparse
    import subprocess
    import sys

    from rlhflab.config import CHECKPOINTS_DIR
    from rlhflab.pipeline import ROOT, STATUS_FILE, default_jobs, run_pipeline

    parser = argparse.ArgumentParser(description=pipeline.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("spec", "demo"), default="spec")
    parser.add_argument("--push-to-hub-prefix", default=None,
                        help="push each checkpoint to PREFIX-reward, PREFIX-judge, PREFIX-sft, PREFIX-ppo-full, "
                             "PREFIX-ppo-lora, PREFIX-grpo, PREFIX-dpo, PREFIX-dcgan")
    parser.add_argument("--only", default=None,
                        help="comma-separated subset: reward,judge,sft,ppo-full,ppo-lora,grpo,dpo,dcgan,eval")
    parser.add_argument("--jobs", type=int, default=None,
                        help="steps run side by side, CPU threads split between them "
                             "(default: 2 on a CPU-only machine with 2+ cores, 1 with a GPU)")
    parser.add_argument("--stand-in-data", action="store_true",
                        help="train on the embedded stand-in data (data/demo/, PHANTOM X-rays) at the profile's sizes, "
                             "for a machine that cannot reach the Hub; the model cards say so")
    parser.add_argument("--serve", action="store_true",
                        help="start the app first (on the checkpoints that exist) and keep it running; each tab fills "
                             "in as its checkpoint lands")
    args = parser.parse_args(argv)
    app = None
    if args.serve:
        # The app starts at once: it shows the base model straight away and picks up each checkpoint as it lands.
        # It idles while nobody uses it, so the training steps keep the cores.
        app = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT,
                               env={**os.environ,
                                    "RLHFLAB_PIPELINE_STATUS": str(CHECKPOINTS_DIR / "logs" / STATUS_FILE)})
        print("the app is starting on http://127.0.0.1:7860 while the checkpoints train; "
              f"progress: {CHECKPOINTS_DIR / 'logs'}", flush=True)
    try:
        ok = run_pipeline(args.profile, CHECKPOINTS_DIR, args.push_to_hub_prefix,
                          args.only.split(",") if args.only else None,
                          jobs=args.jobs if args.jobs is not None else default_jobs(),
                          stand_in_data=args.stand_in_data)
        if app is not None:
            print("all steps ended; the app keeps running (Ctrl-C stops it)." if ok else
                  "the app keeps running: tabs whose checkpoints are missing say how to make them.", flush=True)
            sys.exit(app.wait())
    except KeyboardInterrupt:
        if app is not None:
            app.terminate()
        raise
    sys.exit(0 if ok else 1)

