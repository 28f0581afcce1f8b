"""Anthropic/hh-rlhf preference pairs: split transcripts into prompt, chosen and rejected responses."""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from rlhflab.data._io import is_local, load_hub_rows, read_records
from rlhflab.errors import UserError

ASSISTANT_TAG = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class PreferencePair:
    prompt: str  # the shared transcript prefix, ending with "\n\nAssistant:"
    chosen: str
    rejected: str

    @property
    def messages(self) -> list[dict]:
        return transcript_to_messages(self.prompt)


@dataclass
class PairSet:
    pairs: list[PreferencePair]
    skipped: Counter = field(default_factory=Counter)
    source: str = ""

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


def transcript_to_messages(transcript: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> chat messages (the empty last turn dropped)."""
    parts = _TURN.split(transcript)
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        text = text.strip()
        if text:
            messages.append({"role": "user" if speaker == "Human" else "assistant", "content": text})
    return messages


def split_transcript(transcript: str) -> tuple[str, str] | None:
    idx = transcript.rfind(ASSISTANT_TAG)
    if idx < 0:
        return None
    cut = idx + len(ASSISTANT_TAG)
    return transcript[:cut], transcript[cut:].strip()


def parse_pair(chosen: str, rejected: str) -> tuple[PreferencePair | None, str | None]:
    """A PreferencePair, or None and the reason the row is skipped."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return None, "not text"
    a, b = split_transcript(chosen), split_transcript(rejected)
    if a is None or b is None:
        return None, "no assistant turn"
    (prompt_c, resp_c), (prompt_r, resp_r) = a, b
    if prompt_c != prompt_r:
        return None, "prompts differ"
    if not transcript_to_messages(prompt_c):
        return None, "empty prompt"
    if not resp_c or not resp_r:
        return None, "empty response"
    if resp_c == resp_r:
        return None, "identical responses"
    return PreferencePair(prompt_c, resp_c, resp_r), None


def parse_rows(rows: list[dict], source: str = "") -> PairSet:
    result = PairSet([], Counter(), source)
    for row in rows:
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            result.skipped["missing chosen/rejected"] += 1
            continue
        pair, reason = parse_pair(row["chosen"], row["rejected"])
        if pair is None:
            result.skipped[reason] += 1
        else:
            result.pairs.append(pair)
    return result


def load_pairs(source: str, split: str = "train") -> PairSet:
    """Pairs from a local hh-rlhf-format JSON/JSONL file or a Hub dataset split."""
    if is_local(source):
        rows = read_records(source)
        if not any(isinstance(r, dict) and "chosen" in r and "rejected" in r for r in rows):
            raise UserError(f"dataset file {source} has no 'chosen'/'rejected' fields; it is not in hh-rlhf format.")
    else:
        rows = load_hub_rows(source, split)
    pairs = parse_rows(rows, source)
    if not pairs.pairs:
        raise UserError(f"dataset {source} has no usable preference pairs "
                        f"({pairs.num_skipped} rows skipped: {dict(pairs.skipped)}).")
    return pairs


def train_val_pairs(source: str, train_size: int, val_size: int, seed: int) -> tuple[PairSet, PairSet]:
    """Seeded training subset and a disjoint validation set (the Hub's test split when there is one)."""
    rng = random.Random(seed)
    if is_local(source):
        full = load_pairs(source)
        pairs = list(full.pairs)
        rng.shuffle(pairs)
        if len(pairs) < 4:
            raise UserError(f"dataset {source} has only {len(pairs)} usable pairs; at least 4 are needed.")
        n_val = min(val_size, max(1, len(pairs) // 5))
        val, train = pairs[:n_val], pairs[n_val:][:train_size]
        return PairSet(train, full.skipped, source), PairSet(val, Counter(), source)
    train_all, test_all = load_pairs(source, "train"), load_pairs(source, "test")
    train = rng.sample(train_all.pairs, min(train_size, len(train_all.pairs)))
    val = rng.sample(test_all.pairs, min(val_size, len(test_all.pairs)))
    return PairSet(train, train_all.skipped, source), PairSet(val, test_all.skipped, source)
