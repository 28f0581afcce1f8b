"""The status line at the top of the app while `make demo` trains in the background: what is still training, how
long it should take, and what waits (read from the pipeline's checkpoints/logs/pipeline_status.json)."""
from __future__ import annotations

import json
import time
from pathlib import Path


STALE_S = 90  # a status file not rewritten for this long belongs to a pipeline that is no longer running
DONE_SHOWN_S = 600  # how long "all built" stays on screen after the pipeline ended


def status_path(registry) -> Path:
    return Path(registry.env.get("RLHFLAB_PIPELINE_STATUS") or registry.checkpoints_dir / "logs" / "pipeline_status.json")


def _minutes(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _remaining_s(running: dict, now: float) -> float | None:
    """A running step's seconds left: the pipeline's estimate (None where it has none), else (a status file without
    the field) expected − elapsed."""
    if "remaining_s" in running:  # None: past its expected time with no progress to project from
        return running["remaining_s"]
    if running.get("expected_s"):
        return running["expected_s"] - (now - float(running.get("started", now)))
    return None


def pipeline_status_markdown(registry, now: float | None = None) -> str:
    """One line for the top of the page; empty when no pipeline runs (or it ended a while ago)."""
    path = status_path(registry)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    now = time.time() if now is None else now
    age = now - float(status.get("updated", 0))
    if status.get("done"):
        if age > DONE_SHOWN_S:
            return ""
        if status.get("failed"):
            logs = path.parent
            return ("⚠️ The background training ended with failures: " + ", ".join(
                f"`{name}` (log: `{logs / (name + '.log')}`)" for name in status["failed"]) +
                ". Every other tab works; re-run `make demo` to retry what is missing.")
        return "✅ Every demo checkpoint is built; all tabs are live."
    if age > STALE_S:
        return ""
    parts, left = [], 0.0
    for r in status.get("running", []):
        elapsed = now - float(r.get("started", now))
        remaining = _remaining_s(r, now)
        if remaining is not None:
            parts.append(f"**{r['name']}** ({_minutes(elapsed)} of ~{_minutes(elapsed + max(0.0, remaining))})")
            left = max(left, remaining)
        elif r.get("expected_s"):
            expected = _minutes(r["expected_s"])
            parts.append(f"**{r['name']}** ({_minutes(elapsed)}, longer than the ~{expected} expected)")
        else:
            parts.append(f"**{r['name']}** ({_minutes(elapsed)} so far)")
    pending = status.get("pending", [])
    if status.get("remaining_total_s") is not None:  # the pipeline's simulation of its own schedule
        left = float(status["remaining_total_s"]) - max(0.0, now - float(status.get("updated", now)))
    elif "remaining_total_s" in status:  # a step runs past its expected time and shows no progress to project from
        left = 0.0
    else:  # a status file from before it wrote one
        left += sum(p.get("expected_s") or 0 for p in pending) / max(1, len(status.get("running", [])))
    text = "⏳ Training in the background: " + (", ".join(parts) or "starting")
    if pending:
        text += "; waiting: " + ", ".join(p["name"] for p in pending)
    if left > 0:
        text += f" — about {max(1, round(left / 60))} min left"
    if status.get("slower_than_profile"):
        text += (f" (this machine runs the steps {status.get('speed_factor', 0):.1f}× as long as the demo profile "
                 f"expects, e.g. a CPU without native bf16; the estimate follows what it has measured)")
    return text + ". Each tab fills in as its checkpoint lands (the curves tab follows running trainings)."


def training_eta(status_file: Path, output: str, now: float | None = None) -> str | None:
    """'training now, about N min left' (or 'queued for training') for a checkpoint folder the background pipeline
    is building, from its status file; None when no live pipeline builds it."""
    try:
        status = json.loads(Path(status_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    now = time.time() if now is None else now
    if status.get("done") or now - float(status.get("updated", 0)) > STALE_S:
        return None
    for r in status.get("running", []):
        if r.get("output") == output:
            remaining = _remaining_s(r, now)
            return ("training now" + (f", about {max(1, round(remaining / 60))} min left" if remaining is not None
                                       else ""))
    for p in status.get("pending", []):
        if p.get("output") == output:
            return "queued for training in the background"
    return None
