"""Build every checkpoint that is missing — reward model, full PPO, LoRA PPO, DCGAN, evaluation — then
optionally serve the app: `python training/pipeline.py --profile demo|spec [--serve]`.

Each step runs as its own process (its output goes to checkpoints/logs/<step>.log) under one
progress display; a finished checkpoint is reused, and a failed step keeps the ones before it
and names the command to re-run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhflab.config import CHECKPOINTS_DIR  # noqa: E402


@dataclass
class Step:
    name: str
    script: str
    args: list[str]
    output: str  # checkpoint folder name under checkpoints/
    done_file: str  # present when the step finished
    hub_suffix: str | None = None

    def command(self, profile: str, extra: list[str]) -> list[str]:
        return [sys.executable, str(ROOT / self.script), "--profile", profile, *self.args, *extra]


STEPS = [
    Step("reward model", "training/reward.py", [], "reward", "reward_eval.json", "reward"),
    Step("PPO (full)", "training/ppo.py", ["--mode", "full"], "ppo-full", "ppo_info.json", "ppo-full"),
    Step("PPO (LoRA)", "training/ppo.py", ["--mode", "lora"], "ppo-lora", "ppo_info.json", "ppo-lora"),
    Step("DCGAN", "training/dcgan.py", [], "dcgan", "config.json", "dcgan"),
    Step("evaluation", "eval/evaluate.py", [], "eval", "report.md", None),
]


def is_done(step: Step, checkpoints: Path) -> bool:
    return (checkpoints / step.output / step.done_file).is_file()


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4000))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][-90:] if parts else ""


def run_pipeline(profile: str, checkpoints: Path = CHECKPOINTS_DIR, push_prefix: str | None = None,
                 only: list[str] | None = None) -> bool:
    from tqdm import tqdm

    logs = checkpoints / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if not only or s.output in only]
    todo = [s for s in steps if not is_done(s, checkpoints)]
    for s in steps:
        if s not in todo:
            print(f"reusing {checkpoints / s.output}")
    if not todo:
        return True
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="pipeline", unit="step", dynamic_ncols=True,
               bar_format="{desc} {n_fmt}/{total_fmt} steps |{bar}| {elapsed} {postfix}")
    for i, step in enumerate(todo, 1):
        extra = []
        if push_prefix and step.hub_suffix:
            extra += ["--push-to-hub", f"{push_prefix}-{step.hub_suffix}"]
        cmd = step.command(profile, extra)
        log = logs / f"{step.output}.log"
        bar.set_description_str(f"[{i}/{len(todo)}] {step.name}")
        start = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"})
            stop = threading.Event()

            def watch():
                while not stop.wait(1.0):
                    bar.set_postfix_str(_last_line(log), refresh=True)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            rc = proc.wait()
            stop.set()
            watcher.join()
        seconds = time.perf_counter() - start
        if rc != 0:
            bar.close()
            pretty = " ".join(shlex.quote(c) for c in cmd)
            print(f"\nstep '{step.name}' failed after {seconds:.0f} s (exit {rc}); the checkpoints before it are kept.\n"
                  f"last lines of {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-8:]) +
                  f"\nfix the cause, then re-run: {pretty}\n(or run the pipeline again: it reuses what exists)",
                  file=sys.stderr)
            return False
        bar.write(f"{step.name}: done in {seconds:.0f} s -> {checkpoints / step.output}")
        bar.update(1)
    bar.set_postfix_str("")
    bar.close()
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("spec", "demo"), default="spec")
    parser.add_argument("--push-to-hub-prefix", default=None,
                        help="push each checkpoint to PREFIX-reward, PREFIX-ppo-full, PREFIX-ppo-lora, PREFIX-dcgan")
    parser.add_argument("--only", default=None, help="comma-separated subset: reward,ppo-full,ppo-lora,dcgan,eval")
    parser.add_argument("--serve", action="store_true", help="start the app afterwards")
    args = parser.parse_args(argv)
    ok = run_pipeline(args.profile, CHECKPOINTS_DIR, args.push_to_hub_prefix,
                      args.only.split(",") if args.only else None)
    if args.serve:
        if not ok:
            print("starting the app anyway: tabs whose checkpoints are missing say how to make them.")
        os.execv(sys.executable, [sys.executable, str(ROOT / "app.py")])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
