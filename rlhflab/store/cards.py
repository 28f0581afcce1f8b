"""Model cards: rendering, the lab's own block in a policy card, and what a card says about how a checkpoint was made."""
from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from pathlib import Path

CARD_FILE = "README.md"

# method -> (display name, what it optimises); the order is the order the app and the report list them in
POLICY_METHODS: dict[str, tuple[str, str]] = {
    "base": ("Base", "the model as downloaded"),
    "sft": ("SFT", "supervised fine-tuning on the chosen responses"),
    "ppo": ("PPO", "PPO against the reward model"),
    "dpo": ("DPO", "direct preference optimisation on the preference pairs"),
    "grpo": ("GRPO", "group-relative policy optimisation against the reward model"),
    "rloo": ("RLOO", "REINFORCE leave-one-out against the reward model"),
}


POLICY_INFO_FILE = "policy_info.json"


def policy_metadata(method: str, mode: str, base_model: str, init_from: str | None) -> dict:
    """The `rlhflab` block of a policy checkpoint's card (and its policy_info.json)."""
    if method not in POLICY_METHODS:
        raise ValueError(f"unknown policy method {method!r}")
    return {"kind": "policy", "method": method, "mode": mode, "base_model": base_model,
            "init_from": init_from or base_model}


def command_line() -> str:
    """The command that is running, as a user would re-type it."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def how_it_was_made(seconds: float, bf16_asked: bool) -> str:
    """A card's "How it was made" line: the command, its time, the machine (CPU model with its vector features, the
    GPU if any) and the precision the run actually used: on a CPU without native bf16 that is fp32 whatever the
    config asked, and the card says so rather than repeating the flag."""
    from rlhflab.models.hardware import hardware_description
    from rlhflab.models.precision import runs_bf16

    if runs_bf16(bf16_asked):
        precision = "bf16 autocast"
    elif bf16_asked:
        precision = "fp32 (bf16 was asked for; this machine has no fast bf16)"
    else:
        precision = "fp32"
    return f"`{command_line()}` in {seconds:.0f} s on {hardware_description()}; precision: {precision}."


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


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


CARD_KEY = "rlhflab"


def card_front_matter(text: str) -> dict:
    """The YAML front matter of a model card ({} when it has none or it does not parse)."""
    import yaml

    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


@functools.lru_cache(maxsize=256)
def _card_block(path: str, mtime_ns: int, size: int):
    """The card's `rlhflab` block, parsed once per version of the file: the app lists the store's policies on every
    request, and a card only changes when its checkpoint is rewritten (which changes its mtime)."""
    return card_front_matter(Path(path).read_text(encoding="utf-8")).get(CARD_KEY)


def read_policy_metadata(folder: str | Path) -> dict | None:
    """What a local checkpoint folder says it is: its card's `rlhflab` block, else policy_info.json, else (PPO
    checkpoints written before the block existed) ppo_info.json. None when it is not a policy."""
    folder = Path(folder)
    card = folder / CARD_FILE
    try:
        stat = card.stat()
        block = _card_block(str(card), stat.st_mtime_ns, stat.st_size)
    except OSError:
        block = None
    if isinstance(block, dict) and block.get("kind") == "policy" and block.get("method") in POLICY_METHODS:
        return dict(block)
    for name in (POLICY_INFO_FILE, "ppo_info.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if name == "ppo_info.json":
            return policy_metadata("ppo", info.get("mode", "full"), info.get("base_model", ""), None)
        if isinstance(info, dict) and info.get("method") in POLICY_METHODS:
            return info
    return None
