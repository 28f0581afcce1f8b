"""Reading local JSON/JSONL files and Hub datasets with one-sentence errors."""
from __future__ import annotations

import json
from pathlib import Path

from rlhflab.errors import DatasetUnavailable, UserError


def is_local(source: str) -> bool:
    return Path(source).suffix.lower() in (".json", ".jsonl") or Path(source).exists()


def read_records(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (one object a line) or a JSON file holding a list of objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist; pass an existing JSON/JSONL file with --dataset.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise UserError(f"dataset file {path} is empty.")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UserError(f"dataset file {path} is not valid JSON or JSONL ({exc.msg} at line {exc.lineno}).") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"dataset file {path} must hold JSON objects (one per line in JSONL).")
    return rows


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick connect to the Hub (instead of the libraries' minute of retries when there is no network)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_hub_rows(repo_id: str, split: str) -> list[dict]:
    """Rows of a Hub dataset split (offline: from the local datasets cache); else a DatasetUnavailable."""
    import os

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # let a cached copy load without retries
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets

        return list(datasets.load_dataset(repo_id, split=split))
    except Exception as exc:  # the datasets library raises many types for "unreachable"
        raise DatasetUnavailable(
            f"the dataset {repo_id!r} could not be reached ({type(exc).__name__}); without network use "
            f"--profile demo, or pass --dataset a local JSON/JSONL file in the same format."
        ) from None
