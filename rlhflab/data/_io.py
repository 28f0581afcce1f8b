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


def load_hub_rows(repo_id: str, split: str) -> list[dict]:
    """Rows of a Hub dataset split; no network becomes a DatasetUnavailable with the way out."""
    try:
        import datasets

        return list(datasets.load_dataset(repo_id, split=split))
    except Exception as exc:  # the datasets library raises many types for "unreachable"
        raise DatasetUnavailable(
            f"the dataset {repo_id!r} could not be reached ({type(exc).__name__}); without network use "
            f"--profile demo, or pass --dataset a local JSON/JSONL file in the same format."
        ) from None
