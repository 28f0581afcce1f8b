"""The pipeline's scheduler: runs the steps of rlhflab.steps (the one map of step, folder and command, which the
app reads too) in order, with a share of the cores each, and writes what the app's status line reads.

Each step runs as its own process (its output goes to checkpoints/logs/<step>.log) under one
progress display; a finished checkpoint is reused, and a failed step keeps the ones before it
and names the command to re-run. With `jobs=2` (the default on a CPU-only machine) steps that
do not depend on each other run side by side with the CPU threads split between them. The
pipeline writes what is still running (and how long it should take) to
checkpoints/logs/pipeline_status.json, which the app shows. The command line is training/pipeline.py.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.config import CHECKPOINTS_DIR, THREADS_FILE_ENV
from rlhflab.config import REPO_ROOT as ROOT  # the repository: the steps are its scripts
from rlhflab.errors import DATASET_UNAVAILABLE_EXIT
from rlhflab.steps import STEPS, Step
from rlhflab.store.checkpoints import recover_interrupted_save


STATUS_FILE = "pipeline_status.json"


SLOWER_THAN_PROFILE = 1.5  # a host this many times slower than the profile's times gets a sentence saying so
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")  # a tqdm bar's "k/N [" (the steps' progress bars)


def progress_fraction(log_tail: str) -> float | None:
    """How far a step is by the last progress bar in its log (k/N of its current bar), or None without one."""
    found = _PROGRESS.findall(log_tail)
    if not found:
        return None
    k, n = (int(x) for x in found[-1])
    return k / n if 0 < k < n else None  # a finished bar belongs to a phase that is over: it says nothing of the rest


def host_speed_factor(observed: list[tuple[float, float]]) -> float:
    """How many times the profile's expected seconds this host takes: the median of actual / expected over the
    steps seen so far (finished ones, and running ones past their expected time); 1.0 before any. The
    expected times were measured on one host of each kind (native bf16, or fp32 only), and another CPU of that kind
    can be faster or slower, so the remaining time follows what this host has shown."""
    ratios = sorted(actual / expected for actual, expected in observed if expected and actual > 0)
    return statistics.median(ratios) if ratios else 1.0


def simulated_remaining_s(running: list[tuple[str, float]], pending: list[tuple[str, list[str], float | None]],
                          jobs: int) -> float | None:
    """Seconds until the last step ends if the scheduler goes on as it does: whenever a slot is free, the first
    pending steps (in priority order) whose dependencies have ended take it, at most `jobs` at a time, each for its
    expected seconds. `running`: (output, seconds left) of each running step; `pending`: (output, outputs it waits
    for, expected seconds). A dependency outside the run counts as met, as in run_pipeline. None when a time is
    unknown. Dividing the pending seconds by the jobs instead promised a third too little: the evaluation waits for
    every policy and runs alone at the end."""
    if any(left is None for _, left in running) or any(s is None for _, _, s in pending):
        return None
    t, active, waiting = 0.0, [(left, out) for out, left in running], list(pending)
    while True:
        unfinished = {out for _, out in active} | {out for out, _, _ in waiting}
        for step in [w for w in waiting if not set(w[1]) & unfinished]:
            if len(active) >= max(1, jobs):
                break
            waiting.remove(step)
            active.append((t + step[2], step[0]))
        if not active:
            return t  # nothing runs and nothing can start: the rest waits on a step that failed
        active.sort()
        t, _ = active.pop(0)


def critical_path_first(steps: list[Step], expected) -> list[Step]:
    """The steps in the order the scheduler offers them free cores: longest chain of expected seconds from the step
    to the end of the run first (its own time plus the longest chain among the steps that wait for it); steps of
    equal chains, or without expected times (the spec profile), keep their STEPS order. With two slots, putting
    GRPO (the longest RL step) right after the reward model it needs shortens the demo by about a twelfth: the
    simulation of the schedule with run 10's step times gives 991 s against 1,075 s in STEPS order, with run 11's
    3,595 s against 3,937 s (and reproduces both runs' actual totals in STEPS order)."""
    outputs = {s.output for s in steps}
    chain: dict[str, float] = {}

    def length(step: Step) -> float:
        if step.output not in chain:
            after = [d for d in steps if step.output in d.after and d.output in outputs]
            chain[step.output] = (expected(step) or 0.0) + max((length(d) for d in after), default=0.0)
        return chain[step.output]

    return sorted(steps, key=lambda s: -length(s))  # sorted() is stable: ties keep STEPS order


def _projected_total(r, now: float) -> float | None:
    """A running step's total seconds projected from its progress bar, once it is far enough for that to mean much."""
    fraction = progress_fraction(_log_tail(r.log)) if r.log else None
    elapsed = now - r.wall_start
    return elapsed / fraction if fraction and fraction >= 0.2 and elapsed > 0 else None


def write_status(path: Path, profile: str, running: list, pending: list, finished: list[str], failed: list[str],
                 t0: float, observed: list[tuple[float, float]] | None = None, jobs: int = 1,
                 fp32: bool | None = None) -> None:
    """What the app's status line reads: each running step with its start, expected duration and remaining time,
    what waits, and how fast this host is against the profile's times (`observed`: (actual, expected) seconds of
    the finished steps)."""
    now = time.time()

    if fp32 is None:  # which of the profile's expected-time tables applies (run_pipeline passes its own)
        from rlhflab.models.precision import runs_bf16

        fp32 = not runs_bf16()

    def expected(step) -> float | None:
        return step.expected_s(profile, fp32)

    projected = {id(r): _projected_total(r, now) for r in running}
    # The host's speed from what it has shown for whole steps: the finished ones, and a running one already past its
    # expected time (at least that slow). A running step's progress bar is no measure of the step: it is often a
    # sub-phase's (the reward model's test pairs, the probe's prompts): in run 12 such bars moved the promise from
    # 45 to 90 min for about a minute, twice (BENCHMARKS.md, run 12).
    overdue = [(now - r.wall_start, expected(r.step)) for r in running
               if expected(r.step) and now - r.wall_start > expected(r.step)]
    factor = host_speed_factor(list(observed or []) + overdue)

    def scaled(step) -> float | None:
        return expected(step) * factor if expected(step) else None

    def remaining(r) -> float | None:
        # The profile's time at this host's speed, which the median over every step keeps steady; a step's own bar
        # can belong to a sub-phase (the probe's prompts, one policy's answers) and swings by 2x as phases
        # change. Its projection is used only for a step that has run past its expected time.
        elapsed, total = now - r.wall_start, scaled(r.step)
        if total is None or total < elapsed:  # past its expected time: only its own bar can say, else no estimate
            total = projected[id(r)]
        return max(0.0, total - elapsed) if total else None

    left = simulated_remaining_s([(r.step.output, remaining(r)) for r in running],
                                 [(s.output, s.after, scaled(s)) for s in pending], jobs)
    status = {"profile": profile, "updated": now, "started": t0, "speed_factor": round(factor, 2),
              "remaining_total_s": left, "jobs": jobs,
              "slower_than_profile": factor >= SLOWER_THAN_PROFILE,
              "running": [{"name": r.step.name, "output": r.step.output, "started": r.wall_start,
                           "expected_s": scaled(r.step), "remaining_s": remaining(r)} for r in running],
              "pending": [{"name": s.name, "output": s.output, "expected_s": scaled(s)} for s in pending],
              "finished": finished, "failed": failed, "done": not running and not pending}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # the app never reads a half-written file


def stand_in_base_model(profile: str) -> str | None:
    """The embedded model, when a spec run on stand-in data cannot load the spec's base model either."""
    from rlhflab.config import DEMO_BASE_MODEL, SPEC_BASE_MODEL
    from rlhflab.store.hub import hub_model_available

    if profile != "spec" or hub_model_available(SPEC_BASE_MODEL):  # the demo profile trains the embedded model
        return None
    print(f"note: {SPEC_BASE_MODEL} cannot load here (offline, not in the HF cache); the stand-in run trains the "
          f"embedded {DEMO_BASE_MODEL} at the {profile} profile's sizes.", file=sys.stderr, flush=True)
    return DEMO_BASE_MODEL


def is_done(step: Step, checkpoints: Path) -> bool:
    return (checkpoints / step.output / step.done_file).is_file()


def default_jobs() -> int:
    """Side-by-side steps on a CPU-only machine with at least 2 cores; one at a time on a GPU."""
    if shutil.which("nvidia-smi") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _log_tail(path: Path, size: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    parts = [p.strip() for p in _log_tail(path).replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][-70:] if parts else ""


@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    cmd: list[str]
    log: Path
    start: float
    threads: int
    wall_start: float = field(default_factory=time.time)


def _share_file(logs: Path, step: Step) -> Path:
    return logs / f"{step.output}.threads"


def _step_env(threads: int, share_file: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           THREADS_FILE_ENV: str(share_file)}
    # Two processes with two OpenMP threads each on two cores run far slower than one
    # (threads spin at barriers while descheduled); give each side-by-side step its share.
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_pipeline(profile: str, checkpoints: Path = CHECKPOINTS_DIR, push_prefix: str | None = None,
                 only: list[str] | None = None, jobs: int = 1, steps: list[Step] | None = None,
                 cores: int | None = None, stand_in_data: bool = False) -> bool:
    """Run the missing steps (at most `jobs` at a time, dependencies first); True when all succeeded.

    `stand_in_data` points every step at the embedded stand-in data (data/demo/, the phantom X-rays) while
    keeping the profile's sizes: the spec-sized run on a machine that cannot reach the Hub. The stand-ins
    hold 338 preference pairs and 354 English prompts, so sizes above that are capped by the data; where the
    spec's base model cannot load either (offline, not in the HF cache), the steps train the embedded model."""
    from tqdm import tqdm

    logs = checkpoints / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = [s for s in (steps or STEPS) if not only or s.output in only]
    base_model = stand_in_base_model(profile) if stand_in_data else None
    for s in steps:  # a checkpoint whose save was killed between its renames is put back first
        if note := recover_interrupted_save(checkpoints / s.output):
            print(note)
    from rlhflab.models.precision import runs_bf16  # torch only once steps are to run

    fp32 = not runs_bf16()  # which of the profile's expected-time tables this host is compared with
    todo = critical_path_first([s for s in steps if not is_done(s, checkpoints)],
                               lambda step: step.expected_s(profile, fp32))
    for s in steps:
        if s not in todo:
            print(f"reusing {checkpoints / s.output}")
    if not todo:
        return True
    cores = cores or os.cpu_count() or 1
    jobs = max(1, jobs)
    t0 = time.perf_counter()
    live = sys.stderr.isatty()  # a redrawn bar on a terminal; a status line every 30 s in a log
    bar = tqdm(total=len(todo), desc="pipeline", unit="step", dynamic_ncols=True, disable=not live,
               bar_format="{desc} {n_fmt}/{total_fmt} steps |{bar}| {elapsed} {postfix}")
    last_status = time.perf_counter()
    pending, running, finished, failed = list(todo), [], set(), []
    observed: list[tuple[float, float]] = []  # (actual, expected) seconds of each finished step: the host's speed
    todo_outputs = {s.output for s in todo}
    status_path = logs / STATUS_FILE
    wall_t0 = time.time()

    def save_status():
        write_status(status_path, profile, running, pending, sorted(finished), [f[0].step.output for f in failed],
                     wall_t0, observed, jobs, fp32)

    def ready(step: Step) -> bool:
        # a dependency that is not part of this run (reused, or left out by --only) counts as met:
        # the step itself says clearly if the checkpoint it needs is missing
        return all(d in finished or d not in todo_outputs for d in step.after)

    def launch(step: Step, threads: int):
        extra = ["--push-to-hub", f"{push_prefix}-{step.hub_suffix}"] if push_prefix and step.hub_suffix else []
        extra += step.stand_in if stand_in_data else []
        extra += ["--base-model", base_model] if base_model and step.takes_base_model else []
        cmd = step.command(profile, extra)
        log = logs / f"{step.output}.log"
        fh = open(log, "w")
        _share_file(logs, step).write_text(str(threads))
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=_step_env(threads, _share_file(logs, step)))
        fh.close()  # the child holds its own handle
        running.append(_Running(step, proc, cmd, log, time.perf_counter(), threads))
        if not live:
            print(f"started {step.name} ({threads} thread{'s' * (threads > 1)}), log: {log}", flush=True)

    while pending or running:
        if not failed:
            startable = [s for s in pending if ready(s)]
            # Everything that can start now starts now (up to `jobs`), sharing the cores evenly.
            batch = startable[: max(0, jobs - len(running))]
            if batch:
                share = max(1, cores // (len(running) + len(batch)))
                for step in batch:
                    pending.remove(step)
                    launch(step, share)
        elif not running:
            break
        save_status()
        time.sleep(0.5)
        for r in list(running):
            rc = r.proc.poll()
            if rc is None:
                continue
            running.remove(r)
            seconds = time.perf_counter() - r.start
            if rc != 0:
                failed.append((r, rc, seconds))
                continue
            finished.add(r.step.output)
            if expected := r.step.expected_s(profile, fp32):
                observed.append((seconds, expected))
            # nothing can take the freed cores now (what waits, waits for a running step): the others grow. Run 12
            # left a core idle for 87 s while PPO LoRA ran alone and the evaluation waited for it.
            if running and (failed or not any(ready(s) for s in pending)):
                for other in running:  # (the step reads its share at its next phase: rlhflab.models.hardware.follow_thread_share)
                    other.threads = max(1, cores // len(running))
                    _share_file(logs, other.step).write_text(str(other.threads))
            tqdm.write(f"{r.step.name}: done in {seconds:.0f} s ({r.threads} thread{'s' * (r.threads > 1)}) "
                      f"-> {checkpoints / r.step.output}")
            bar.update(1)
        desc = " + ".join(r.step.name for r in running) or "pipeline"
        status = " | ".join(_last_line(r.log) for r in running)[-110:]
        if live:
            bar.set_description_str(f"[{len(finished) + 1}/{len(todo)}] {desc}" if running else desc, refresh=False)
            bar.set_postfix_str(status, refresh=True)
        elif running and time.perf_counter() - last_status > 30:
            last_status = time.perf_counter()
            print(f"[{time.perf_counter() - t0:.0f} s] {desc}: {status}", flush=True)

    pending.clear()
    save_status()
    bar.set_postfix_str("")
    bar.close()
    for r, rc, seconds in failed:
        pretty = " ".join(shlex.quote(c) for c in r.cmd)
        print(f"\nstep '{r.step.name}' failed after {seconds:.0f} s (exit {rc}); the checkpoints before it are kept.\n"
              f"last lines of {r.log}:\n" + "\n".join(r.log.read_text(errors="replace").splitlines()[-8:]) +
              f"\nfix the cause, then re-run: {pretty}\n(or run the pipeline again: it reuses what exists)",
              file=sys.stderr)
        if rc == DATASET_UNAVAILABLE_EXIT and not stand_in_data:
            print(f"no Hub access? `python training/pipeline.py --profile {profile} --stand-in-data` trains at the "
                  f"'{profile}' sizes on the embedded stand-in data instead (labelled as such).", file=sys.stderr)
    if failed:
        return False
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s")
    return True
