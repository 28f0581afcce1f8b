"""The checkpoint store: atomic saves in Hub layout, model cards, resolving local paths or Hub ids, pushing."""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlhflab.errors import UserError

CARD_FILE = "README.md"
METRICS_FILE = "metrics.jsonl"


def command_line() -> str:
    """The command that is running, as a user would re-type it."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


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


def render_model_card(metadata: dict, title: str, sections: dict[str, str]) -> str:
    """README.md with YAML front matter (the Hub reads it) and Markdown sections."""
    import yaml

    front = "---\n" + yaml.safe_dump(json.loads(json.dumps(metadata, default=str)), sort_keys=False,
                                     allow_unicode=True) + "---\n"
    body = f"\n# {title}\n"
    for heading, text in sections.items():
        body += f"\n## {heading}\n\n{text.strip()}\n"
    return front + body


def write_model_card(folder: str | Path, metadata: dict, title: str, sections: dict[str, str]) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(render_model_card(metadata, title, sections), encoding="utf-8")
    return path


def read_model_card(folder: str | Path) -> str | None:
    path = Path(folder) / CARD_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def write_json(path: str | Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted write
    return out


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


@dataclass
class PushResult:
    ok: bool
    repo_id: str
    message: str
    url: str | None = None


def push_folder(folder: str | Path, repo_id: str, api=None, private: bool = False,
                commit_message: str | None = None) -> PushResult:
    """Upload a checkpoint folder to a Hub model repo; never raises, never touches the local folder.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed.
    """
    from huggingface_hub import HfApi

    api = api or HfApi()
    folder = Path(folder)
    keep = f"the local checkpoint {folder} is intact, so retry with the same --push-to-hub once that is fixed"
    token = getattr(api, "token", None)
    if not isinstance(token, str):  # None: the client falls back to HF_TOKEN or the saved login
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        return PushResult(False, repo_id, f"push to {repo_id} not attempted: no Hugging Face token found — set "
                                          f"HF_TOKEN to a token with write access or run `hf auth login`; {keep}.")
    step = "creating the repo"
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        step = "uploading the files"
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {folder.name} from rlhflab",
                                 ignore_patterns=["trainer_state/*", "training_state/*", "*.tmp*"])
        url = getattr(info, "commit_url", None) or str(info)
        return PushResult(True, repo_id, f"pushed {folder} to https://huggingface.co/{repo_id}", url)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return PushResult(False, repo_id, f"push to {repo_id} failed while {step} ({type(exc).__name__}: {detail})"
                                          f"{_push_failure_hint(exc)}; {keep}.")


def _push_failure_hint(exc: Exception) -> str:
    """What to do about a failed Hub call, told apart by its kind (offline mode, refused token, no network)."""
    names = {c.__name__ for c in type(exc).__mro__}  # httpx's errors are not OSErrors; match them by name
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if "OfflineModeIsEnabled" in names:
        return " — HF_HUB_OFFLINE is set: unset it (or set it to 0) to push"
    if status in (401, 403):
        return (f" — the Hub refused the token (HTTP {status}): set HF_TOKEN to a token with write access to the "
                f"repo or run `hf auth login`")
    if names & {"ConnectionError", "TimeoutError", "TransportError", "NetworkError", "TimeoutException"}:
        return " — the Hub could not be reached: check the network connection (and HF_ENDPOINT, if set)"
    return ""


def report_push(folder: str | Path, repo_id: str | None) -> PushResult | None:
    """Push when asked; print the outcome, or raise UserError on failure (scripts call this last)."""
    if not repo_id:
        return None
    result = push_folder(folder, repo_id)
    if not result.ok:  # the script exits non-zero with this one sentence; the checkpoint stays
        raise UserError(result.message)
    print(result.message)
    return result


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def hardware_description() -> str:
    """One line naming the machine: CPU model and cores, GPU if any, torch version."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
