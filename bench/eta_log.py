"""How honest the app's "about N min left" is: sample the status line while `make demo` trains, then compare each
promise with the time the pipeline actually still took (issue 27, item 2).

    python bench/eta_log.py CHECKPOINTS_DIR [--every 15] > bench/make_demo/<run>/eta.txt

Reads CHECKPOINTS_DIR/logs/pipeline_status.json through the app's own status line (space.status) every --every
seconds until the pipeline says done, printing one row per sample: seconds since the first sample, the minutes left
the line promised, and its text. At the end, for each sample, the actual seconds left (done time − sample time) and
the error of the promise (promised / actual − 1); the summary gives the share of samples within ±25 % and the
first sample's error (what a visitor reads when the demo starts). Run it beside bench/time_demo.sh.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from types import SimpleNamespace

from common import command, machine

from space.status import pipeline_status_markdown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path)
    p.add_argument("--every", type=float, default=15.0)
    p.add_argument("--timeout", type=float, default=4 * 3600.0)
    args = p.parse_args(argv)
    status_file = args.checkpoints / "logs" / "pipeline_status.json"
    registry = SimpleNamespace(env={"RLHFLAB_PIPELINE_STATUS": str(status_file)}, checkpoints_dir=args.checkpoints)
    print(f"command: {command()}\nmachine: {machine()}", flush=True)
    samples: list[tuple[float, float]] = []  # (wall time, promised seconds left)
    t0 = None
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        line = pipeline_status_markdown(registry) if status_file.is_file() else ""
        now = time.time()
        if line.startswith("✅") or "ended with failures" in line:
            done = now
            break
        found = re.search(r"about (\d+) min left", line)
        if found:
            t0 = now if t0 is None else t0
            samples.append((now, 60.0 * int(found.group(1))))
            print(f"{now - t0:7.0f} s  promised {found.group(1):>3} min  | {line[:160]}", flush=True)
        time.sleep(args.every)
    else:
        print("timed out before the pipeline finished")
        return 1
    if not samples:
        print("no 'min left' line was seen")
        return 1
    print(f"pipeline done {done - t0:.0f} s after the first sample; {line[:120]}")
    errors = []
    for when, promised in samples:
        actual = done - when
        if actual >= 60:  # the line rounds to whole minutes: the last minute says nothing about the estimate
            errors.append((when - t0, promised, actual, promised / actual - 1))
    print("| since first sample (s) | promised left (s) | actual left (s) | error |\n|---|---|---|---|")
    for since, promised, actual, err in errors:
        print(f"| {since:.0f} | {promised:.0f} | {actual:.0f} | {100 * err:+.0f} % |")
    within = sum(1 for e in errors if abs(e[3]) <= 0.25)
    print(f"summary: {within}/{len(errors)} samples within ±25 %; first sample {100 * errors[0][3]:+.0f} % "
          f"(promised {errors[0][1] / 60:.0f} min, took {errors[0][2] / 60:.1f} min)" if errors else "summary: none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
