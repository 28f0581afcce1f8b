"""The checkpoint store: atomic saves, recovery of an interrupted save, and resolving a name to a local folder."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

from rlhflab.errors import UserError

METRICS_FILE = "metrics.jsonl"  # a training run's per-step log
RESULTS_FILE = "results.json"  # the evaluation's machine-readable results (checkpoints/eval)
REPORT_FILE = "report.md"  # the evaluation's Markdown report, beside them


def save_atomically(output_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_dir), then swap tmp_dir in for output_dir.

    The previous checkpoint stays in place until the new one is complete, so an interrupted
    save (crash, Ctrl-C, full disk) never destroys it.
    """
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint in {out} is untouched" if out.exists() else f"nothing was written to {out}"
        if _is_disk_full(exc):
            raise UserError(f"no space left on the disk while saving the checkpoint {out}, so the save was abandoned "
                            f"and {kept}; free disk space (or choose another --output-dir) and run the command "
                            f"again, with --resume to continue from the last saved state.") from None
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"could not write the checkpoint {out} ({exc.strerror}: {exc.filename}), so the save was "
                            f"abandoned and {kept}; make the folder writable or choose another --output-dir.") from None
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def recover_interrupted_save(output_dir: str | Path) -> str | None:
    """Tidy up after a save_atomically that was killed (SIGKILL, power loss) part-way.

    Killed while writing: a half-written `.NAME.tmp-PID` is left beside the checkpoint; it is removed.
    Killed between the two renames: the checkpoint exists only as `.NAME.old-PID`; it is moved back.
    Folders of a save still running in another process (its PID is alive) are left alone.
    Returns a sentence saying what was done, or None when there was nothing to do.
    """
    out = Path(output_dir)
    if not out.parent.is_dir():
        return None
    done = []
    for leftover in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = leftover.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or not leftover.is_dir():
            continue
        if int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(leftover, out)
            done.append(f"restored {out} from {leftover.name}, left by a save that was interrupted")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover.name}, left by an interrupted save")
    return "; ".join(done) or None


def _is_disk_full(exc: BaseException) -> bool:
    """True for a full disk or quota, also when a writer reports it as text (safetensors raises its own error type)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


def resolve_checkpoint(name_or_path: str | Path, required_file: str | None = None) -> Path:
    """A local folder, else a Hub repo id downloaded (or taken from the HF cache when offline)."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"checkpoint {path} is a file; expected a checkpoint folder.")
        if required_file and not (path / required_file).exists():
            raise UserError(f"checkpoint {path} has no {required_file}; it is incomplete or not this kind of checkpoint.")
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise UserError(f"checkpoint {name} not found: it is neither a local folder nor a Hub repo id (user/name).")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name))
    except Exception as exc:
        raise UserError(f"checkpoint {name} is not a local folder and could not be fetched from the Hub "
                        f"({type(exc).__name__}); offline, only repos already in the HF cache load.") from None
