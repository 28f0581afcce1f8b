"""Replay a `make demo` run's timeline under the status line's remaining-time rule, to compare rules on the same run
(issue 27, item 2): what each sample of bench/eta_log.py would have promised, against the time the run still took.

    python bench/eta_replay.py bench/make_demo/run12 --fp32|--bf16

Reads RUN/eta.txt (bench/eta_log.py's samples: seconds since the first sample, the live promise, the status text with
each running step's elapsed time) and RUN/time_demo.txt (each step's "done in N s"). From them it rebuilds each
step's start and end, and at every sample recomputes the remaining time the way rlhflab.pipeline.write_status does
now: the host's speed factor from the steps finished so far (and from running steps already past their expected
time, which are at least that slow), every other step at its expected time (rlhflab.steps, the host kind's table)
times that factor, through the scheduler's own simulation (simulated_remaining_s, critical_path_first). A running
step past its scaled expected time counts as ending now (the live line then reads its progress bar, which a replay
does not have). Prints both columns' errors and the share of samples within ±25 % (samples with at least a minute
left, as eta_log counts them).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common import command

SAMPLE = re.compile(r"^\s*(\d+) s\s+promised\s+(\d+) min\s+\|(.*)$")
RUNNING = re.compile(r"\*\*([^*]+)\*\* \((\d+):(\d\d) of")
DONE = re.compile(r"^(.+?): done in (\d+) s")
END = re.compile(r"pipeline done (\d+) s after the first sample")


def replay_factor(finished: list[tuple[float, float]], overdue: list[tuple[float, float]]) -> float:
    """The rule under test: rlhflab.pipeline.host_speed_factor over the finished steps (actual, expected) and the
    running ones past their expected time (elapsed, expected)."""
    from rlhflab.pipeline import host_speed_factor

    return host_speed_factor(finished + overdue)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--fp32", dest="fp32", action="store_true", help="the run's host has no native bf16")
    kind.add_argument("--bf16", dest="fp32", action="store_false", help="the run's host has native bf16")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    from rlhflab.pipeline import critical_path_first, simulated_remaining_s
    from rlhflab.steps import STEPS

    eta = (args.run / "eta.txt").read_text().splitlines()
    samples, end = [], None
    for line in eta:
        if m := SAMPLE.match(line):
            running = {name: 60 * int(mm) + int(ss) for name, mm, ss in RUNNING.findall(m.group(3))}
            samples.append((float(m.group(1)), 60.0 * int(m.group(2)), running))
        elif m := END.search(line):
            end = float(m.group(1))
    durations = {m.group(1): float(m.group(2)) for line in (args.run / "time_demo.txt").read_text().splitlines()
                 if (m := DONE.match(line))}
    if end is None or not samples:
        sys.exit(f"{args.run}/eta.txt has no finished run")
    by_name = {s.name: s for s in STEPS}
    start = {}
    for t, _, running in samples:
        for name, elapsed in running.items():
            start.setdefault(name, t - elapsed)
    fp32 = args.fp32

    def expected(step):
        return step.expected_s("demo", fp32)

    order = critical_path_first(STEPS, expected)
    print(f"command: {command()}\nrun: {args.run} ({len(samples)} samples, {'fp32' if fp32 else 'bf16'} table, "
          f"{args.jobs} jobs)")
    print("| since first sample (s) | actual left (s) | live promise | live error | replayed | replayed error |")
    print("|---|---|---|---|---|---|")
    live_ok = replay_ok = n = 0
    first = None
    for t, promised, running in samples:
        actual = end - t
        if actual < 60:
            continue
        done = [(durations[name], expected(by_name[name])) for name, s0 in start.items()
                if name in durations and s0 + durations[name] <= t and name not in running]
        overdue, left = [], []
        for name, elapsed in running.items():
            if elapsed > expected(by_name[name]):
                overdue.append((elapsed, expected(by_name[name])))
        factor = replay_factor(done, overdue)
        for name, elapsed in running.items():
            left.append((by_name[name].output, max(0.0, expected(by_name[name]) * factor - elapsed)))
        seen = set(running) | {name for name, s0 in start.items() if name in durations and s0 + durations[name] <= t}
        pending = [(s.output, s.after, expected(s) * factor) for s in order if s.name not in seen]
        replayed = simulated_remaining_s(left, pending, args.jobs)
        # the live line rounds to whole minutes ("about N min"): the replay is rounded the same way
        replayed = 60.0 * max(1, round(replayed / 60)) if replayed is not None else None
        live_err = promised / actual - 1
        rep_err = replayed / actual - 1 if replayed is not None else None
        n += 1
        live_ok += abs(live_err) <= 0.25
        replay_ok += rep_err is not None and abs(rep_err) <= 0.25
        first = first or (live_err, rep_err, actual)
        print(f"| {t:.0f} | {actual:.0f} | {promised:.0f} | {100 * live_err:+.0f} % | "
              f"{replayed if replayed is None else f'{replayed:.0f}'} | "
              f"{'—' if rep_err is None else f'{100 * rep_err:+.0f} %'} |")
    print(f"summary: live {live_ok}/{n} within ±25 % (first {100 * first[0]:+.0f} %); replayed rule {replay_ok}/{n} "
          f"(first {100 * first[1]:+.0f} %); {first[2] / 60:.1f} min left at the first sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
