"""Compare every policy (and best-of-n) with the base on held-out prompts, scored by the training reward model
and by an independent judge (--judge-model; n/a without one): `python eval/evaluate.py --help`.

Writes results.json, report.md, figures/ and the blind-rating items into one folder the app reads;
`--ratings` aggregates the stored human ratings into a policy x criterion table.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import EvalConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(EvalConfig, argv, description=__doc__)
    if cfg.ratings:
        from rlhflab.evaluation import ratings_report

        print(ratings_report(cfg))
        return None
    from rlhflab.evaluation import run_evaluation

    out = run_evaluation(cfg)
    print((out / "report.md").read_text())
    return out


if __name__ == "__main__":
    main()
