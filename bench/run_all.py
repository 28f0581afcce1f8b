"""Run every benchmark and rewrite BENCHMARKS.md's table: `python bench/run_all.py [--only generation,ppo,...]`.

Each figure is a ratio to a baseline measured in the same run, with the command and machine; results go
to bench/results.json and the table between the markers in BENCHMARKS.md is rewritten from them.
Needs the demo checkpoints (python training/pipeline.py --profile demo) for the PPO, app and load benches.
"""
from __future__ import annotations

import argparse
import importlib
import json
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import command, machine, results_key
from report import BENCHMARKS_MD, RESULTS, write_benchmarks_md

BENCHES = {"generation": "bench_generation", "int8": "bench_int8", "ppo": "bench_ppo", "grpo": "bench_grpo",
           "reward": "bench_reward",
           "dcgan": "bench_dcgan", "app": "bench_app", "matmul": "bench_matmul", "load": "bench_load",
           "pipeline": "bench_pipeline"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    unknown = sorted(set(args.only.split(",")) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench(es) {unknown}; choose from {', '.join(BENCHES)}")
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.only.split(","):
        key = results_key(name)
        print(f"== {key}", flush=True)
        try:
            results[key] = importlib.import_module(BENCHES[name]).run()
            results[key].setdefault("command", command())  # the table names the command of every row
            results[key].setdefault("machine", machine())
            results[key]["measured"] = datetime.now(timezone.utc).isoformat(timespec="minutes")
        except Exception as exc:  # one failing bench must not lose the others
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        RESULTS.write_text(json.dumps(results, indent=2, default=str))
        write_benchmarks_md(results)
    print(f"results in {RESULTS}; the measured-figures table of {BENCHMARKS_MD.name} is rewritten from them.")


if __name__ == "__main__":
    main()
