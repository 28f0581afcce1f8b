"""The status line at the top of the app while `make demo` trains in the background: what is still training, how
long it should take, and what waits (read from the pipeline's checkpoints/logs/pipeline_status.json)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from space.registry import Registry

STALE_S = 90  # a status file not rewritten for this long belongs to a pipeline that is no longer running
DONE_SHOWN_S = 600  # how long "all built" stays on screen after the pipeline ended


def status_path(registry: Registry) -> Path:
    return Path(registry.env.get("RLHFLAB_PIPELINE_STATUS") or registry.checkpoints_dir / "logs" / "pipeline_status.json")


def _minutes(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def pipeline_status_markdown(registry: Registry, now: float | None = None) -> str:
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
        expected = r.get("expected_s")
        if expected:
            parts.append(f"**{r['name']}** ({_minutes(elapsed)} of ~{_minutes(expected)})")
            left = max(left, expected - elapsed)
        else:
            parts.append(f"**{r['name']}** ({_minutes(elapsed)} so far)")
    pending = status.get("pending", [])
    jobs = max(1, len(status.get("running", [])))
    left += sum(p.get("expected_s") or 0 for p in pending) / jobs
    text = "⏳ Training in the background: " + (", ".join(parts) or "starting")
    if pending:
        text += "; waiting: " + ", ".join(p["name"] for p in pending)
    if left > 0:
        text += f" — about {max(1, round(left / 60))} min left"
    return text + ". Each tab fills in as its checkpoint lands (the curves tab follows running trainings)."
