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
from common import command, machine
from report import BENCHMARKS_MD, RESULTS, write_benchmarks_md

BENCHES = {"generation": "bench_generation", "int8": "bench_int8", "ppo": "bench_ppo", "reward": "bench_reward",
           "dcgan": "bench_dcgan", "app": "bench_app", "matmul": "bench_matmul", "load": "bench_load",
           "pipeline": "bench_pipeline"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        try:
            results[name] = importlib.import_module(BENCHES[name]).run()
            results[name].setdefault("command", command())  # the table names the command of every row
            results[name].setdefault("machine", machine())
            results[name]["measured"] = datetime.now(timezone.utc).isoformat(timespec="minutes")
        except Exception as exc:  # one failing bench must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        RESULTS.write_text(json.dumps(results, indent=2, default=str))
        write_benchmarks_md(results)
    print(f"results in {RESULTS}; the measured-figures table of {BENCHMARKS_MD.name} is rewritten from them.")


if __name__ == "__main__":
    main()
