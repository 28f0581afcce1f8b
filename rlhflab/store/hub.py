"""Pushing a checkpoint folder to the Hugging Face Hub; a failed push keeps the local folder and says what failed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhflab.errors import UserError


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


def hub_model_available(repo_id: str, timeout_s: float = 3.0) -> bool:
    """Whether a Hub model can load here: already in the local HF cache, or the Hub answers (not HF_HUB_OFFLINE)."""
    import os
    import socket

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return bool(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"))  # a proxy may still reach it
