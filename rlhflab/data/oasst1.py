"""OpenAssistant/oasst1 prompts: prompter messages only, de-duplicated, seeded train / held-out split."""
from __future__ import annotations

import json
import random
from pathlib import Path

from rlhflab.data._io import is_local, load_hub_rows, read_records
from rlhflab.errors import UserError

REQUIRED_COLUMNS = ("text", "role")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def prompter_texts(rows: list[dict], lang: str | None = None, source: str = "") -> list[str]:
    """Unique prompter texts in first-seen order (assistant messages and deleted rows dropped)."""
    if rows and not (isinstance(rows[0], dict) and all(c in rows[0] for c in REQUIRED_COLUMNS)):
        raise UserError(f"dataset {source} lacks the oasst1 columns {REQUIRED_COLUMNS}; it is not in oasst1 format.")
    seen: set[str] = set()
    texts = []
    for row in rows:
        if not isinstance(row, dict) or row.get("role") != "prompter" or row.get("deleted"):
            continue
        if lang and row.get("lang") != lang:
            continue
        if not isinstance(row.get("text"), str):  # a malformed row (text null, a number, a list) is skipped
            continue
        text = row["text"].strip()
        key = _normalise(text)
        if key and key not in seen:
            seen.add(key)
            texts.append(text)
    return texts


def load_prompts(source: str, lang: str | None = None) -> list[str]:
    if is_local(source):
        rows = read_records(source)
    else:
        rows = load_hub_rows(source, "train")
    texts = prompter_texts(rows, lang, source)
    if not texts:
        roles = sorted({str(r.get("role")) for r in rows if isinstance(r, dict)})[:5]
        raise UserError(f"dataset {source} has no prompter messages with text"
                        + (f" in language {lang!r}" if lang else "")
                        + f" (role values seen: {roles}); oasst1 rows need role 'prompter' and a non-empty 'text'.")
    return texts


def split_prompts(prompts: list[str], num_train: int, num_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded disjoint samples: the held-out set is drawn first so it never depends on num_train."""
    unique = list(dict.fromkeys(prompts))
    rng = random.Random(seed)
    rng.shuffle(unique)
    heldout = unique[:num_heldout]
    train = unique[num_heldout:num_heldout + num_train]
    if not train:
        raise UserError(f"only {len(unique)} unique prompts: none left for training after holding out {num_heldout}.")
    return train, heldout


def save_prompts(path: str | Path, prompts: list[str]) -> None:
    Path(path).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts saved by save_prompts (or any JSONL with a 'prompt' or 'text' field)."""
    rows = read_records(path)
    texts = (r.get("prompt") or r.get("text") for r in rows)
    return [t for t in texts if isinstance(t, str) and t]
