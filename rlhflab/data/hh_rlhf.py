"""Anthropic/hh-rlhf preference pairs: split transcripts into prompt, chosen and rejected responses. A file in TRL's
preference format (prompt, chosen, rejected; conversational or plain text, as the arena exports) loads too."""
from __future__ import annotations

import hashlib
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


def messages_to_transcript(messages: list[dict]) -> str | None:
    """Chat messages -> the hh-rlhf transcript prefix '\n\nHuman: ...\n\nAssistant:' (None if not user/assistant
    turns ending with the user's); system messages are left out, as hh-rlhf has none."""
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    if not turns or any(m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str)
                        for m in turns) or turns[-1]["role"] != "user":
        return None
    return "".join(("\n\nHuman: " if m["role"] == "user" else "\n\nAssistant: ") + m["content"].strip()
                   for m in turns) + ASSISTANT_TAG


def _completion_text(value) -> str | None:
    """A TRL completion: plain text, or a list holding one assistant message."""
    if isinstance(value, str):
        return value.strip()
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"].strip()
    return None


def parse_trl_pair(row: dict) -> tuple[PreferencePair | None, str | None]:
    """A PreferencePair from a row in TRL's preference format with an explicit prompt, or None and the reason."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    transcript = messages_to_transcript(prompt) if isinstance(prompt, list) else None
    if transcript is None or not transcript_to_messages(transcript):
        return None, "prompt is not a user turn"
    chosen, rejected = _completion_text(row["chosen"]), _completion_text(row["rejected"])
    if chosen is None or rejected is None:
        return None, "not text"
    if not chosen or not rejected:
        return None, "empty response"
    if chosen == rejected:
        return None, "identical responses"
    return PreferencePair(transcript, chosen, rejected), None


def parse_rows(rows: list[dict], source: str = "") -> PairSet:
    result = PairSet([], Counter(), source)
    for row in rows:
        if not isinstance(row, dict) or "chosen" not in row or "rejected" not in row:
            result.skipped["missing chosen/rejected"] += 1
            continue
        if "prompt" in row:  # TRL's preference format (e.g. the arena's export)
            pair, reason = parse_trl_pair(row)
        else:
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
            raise UserError(f"dataset file {source} has no 'chosen'/'rejected' fields; it is not in hh-rlhf format "
                            f"(nor in TRL's preference format: prompt, chosen, rejected).")
    else:
        rows = load_hub_rows(source, split)
    pairs = parse_rows(rows, source)
    if not pairs.pairs:
        raise UserError(f"dataset {source} has no usable preference pairs "
                        f"({pairs.num_skipped} rows skipped: {dict(pairs.skipped)}).")
    return pairs


# ---- one home for splitting preference data -------------------------------------------------------------------
# A shared TEST part reports both reward models' accuracy. The other pairs fall on one of two SIDES by a hash of
# their prompt: POLICY (the training reward model, SFT and DPO) or JUDGE (the independent reward model that scores
# policies and must never have seen what a policy trained on). The side depends on the prompt and judge_share only,
# never on the seed or the sizes, so a judge trained today stays disjoint from a policy trained tomorrow with
# other settings. Within a side the seed splits TRAIN from DEV (dev picks the epoch; test is only reported).

ROLES = ("reward", "judge")
DEFAULT_JUDGE_SHARE = 0.6
SPLIT_FILE = "split.json"
DEFAULT_TEST_SIZE = 64  # the demo profile's test part; SFT and DPO keep out the same pairs


def pair_id(pair: PreferencePair) -> str:
    """A stable short id of a pair (its text, not its position), so a saved split can be re-read from the data."""
    text = "\x00".join((pair.prompt, pair.chosen, pair.rejected))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _unit(prompt: str, salt: str) -> float:
    """A number in [0, 1) fixed by the prompt's text (the same on every machine and Python run)."""
    return int(hashlib.sha1(f"{salt}\x00{prompt}".encode("utf-8")).hexdigest()[:13], 16) / 16 ** 13


def prompt_side(prompt: str, judge_share: float = DEFAULT_JUDGE_SHARE) -> str:
    """'judge' or 'policy': the side a prompt's pairs fall on, fixed by the prompt's text and judge_share."""
    return "judge" if _unit(prompt, "side") < judge_share else "policy"


@dataclass
class PreferenceSplit:
    """A dataset's pairs in five disjoint parts; no prompt is in two of them."""
    source: str
    seed: int
    judge_share: float
    test: PairSet
    policy_train: PairSet
    policy_dev: PairSet
    judge_train: PairSet
    judge_dev: PairSet
    skipped: Counter = field(default_factory=Counter)  # rows of the data that are not usable pairs
    dropped: int = 0  # pairs left out because their prompt is in another part (test or dev)
    side_sizes: dict = field(default_factory=dict)  # pairs on each side before train/dev (train may use fewer)

    def role_parts(self, role: str) -> tuple[PairSet, PairSet]:
        """(train, dev) of a reward-model role: 'reward' trains on the policy side, 'judge' on the judge side."""
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; use one of {', '.join(ROLES)}.")
        return (self.policy_train, self.policy_dev) if role == "reward" else (self.judge_train, self.judge_dev)

    @property
    def policy_side(self) -> list[PreferencePair]:
        return self.policy_train.pairs + self.policy_dev.pairs

    @property
    def judge_side(self) -> list[PreferencePair]:
        return self.judge_train.pairs + self.judge_dev.pairs

    def record(self, role: str) -> dict:
        """What split.json holds for a reward model of this role: enough to re-read its parts from the data."""
        train, dev = self.role_parts(role)
        return {"dataset": self.source, "seed": self.seed, "role": role, "judge_share": self.judge_share,
                "side": "policy" if role == "reward" else "judge",
                "sizes": {"train": len(train.pairs), "dev": len(dev.pairs), "test": len(self.test.pairs)},
                "side_sizes": self.side_sizes, "skipped_rows": dict(self.skipped),
                "dropped_for_shared_prompt": self.dropped,
                "ids": {"train": [pair_id(p) for p in train.pairs], "dev": [pair_id(p) for p in dev.pairs],
                        "test": [pair_id(p) for p in self.test.pairs]}}


def _by_prompt_hash(pairs: list[PreferencePair], salt: str) -> list[PreferencePair]:
    return sorted(pairs, key=lambda p: (_unit(p.prompt, salt), pair_id(p)))


def _cap(wanted: int, available: int, what: str, source: str) -> int:
    """A part of at most a fifth of what is there (at least 1), so a small file still leaves pairs to train on."""
    cap = max(1, available // 5)
    if wanted > cap:
        print(f"{source}: {what} capped at {cap} pairs (a fifth of the {available} available; {wanted} asked)",
              flush=True)
    return min(wanted, cap)


def _train_dev(pairs: list[PreferencePair], dev_size: int, train_size: int | None, rng: random.Random,
               source: str, side: str) -> tuple[list, list, int]:
    """Seeded dev and train parts of one side, disjoint by prompt; (train, dev, pairs dropped)."""
    prompts = sorted({p.prompt for p in pairs})
    rng.shuffle(prompts)
    rank = {prompt: i for i, prompt in enumerate(prompts)}
    ordered = sorted(pairs, key=lambda p: (rank[p.prompt], pair_id(p)))
    n_dev = _cap(dev_size, len(ordered), f"{side} dev part", source) if ordered else 0
    dev = ordered[:n_dev]
    dev_prompts = {p.prompt for p in dev}
    rest = [p for p in ordered[n_dev:] if p.prompt not in dev_prompts]
    dropped = len(ordered) - n_dev - len(rest)
    return (rest if train_size is None else rest[:train_size]), dev, dropped


def preference_split(source: str, seed: int, *, dev_size: int, test_size: int,
                     judge_share: float = DEFAULT_JUDGE_SHARE, train_size: int | None = None,
                     judge_train_size: int | None = None) -> PreferenceSplit:
    """The dataset's pairs in disjoint parts: a shared test part, and the policy and judge sides, each in train + dev.

    Test: for a Hub dataset the first `test_size` pairs of its "test" split in prompt-hash order, for a local file
    the first `test_size` of all its pairs in that order (at most a fifth); neither depends on the seed, so
    reward models of any seed share it. Every other pair lands on the judge side when its prompt's hash falls
    below `judge_share`, else on the policy side. `seed` splits each side into dev (`dev_size` pairs) and train
    (`train_size` / `judge_train_size` pairs, default all the rest); a prompt is in one part only.
    """
    if dev_size < 1:
        raise UserError(f"dev_size must be at least 1 (got {dev_size}).")
    test, sides, skipped, dropped = _test_and_sides(source, test_size, judge_share)
    for side, pairs in sides.items():
        if len(pairs) < 2:
            raise UserError(f"dataset {source} leaves {len(pairs)} pairs on the {side} side (judge_share "
                            f"{judge_share}, {len(test)} test pairs); each side needs at least 2, for train and dev: "
                            f"use a larger file.")
    parts = {}
    for side, size in (("policy", train_size), ("judge", judge_train_size)):
        train, dev, n = _train_dev(sides[side], dev_size, size, random.Random(f"{seed}:{side}"), source, side)
        dropped += n
        parts[side] = (PairSet(train, Counter(), source), PairSet(dev, Counter(), source))
    return PreferenceSplit(source, seed, judge_share, PairSet(test, Counter(), source), *parts["policy"],
                           *parts["judge"], skipped=Counter(skipped), dropped=dropped,
                           side_sizes={side: len(pairs) for side, pairs in sides.items()})


def _test_and_sides(source: str, test_size: int, judge_share: float):
    """(test pairs, {"policy": pairs, "judge": pairs}, skipped rows, pairs dropped for sharing a test prompt)."""
    if not 0.0 < judge_share < 1.0:
        raise UserError(f"judge_share must lie strictly between 0 and 1 (got {judge_share}); it is the judge "
                        f"side's share of the pairs outside the test part.")
    if test_size < 1:
        raise UserError(f"test_size must be at least 1 (got {test_size}).")
    if is_local(source):
        full = load_pairs(source)
        skipped = full.skipped
        if len(full.pairs) < 2:
            raise UserError(f"dataset {source} has only {len(full.pairs)} usable pair; at least 2 are needed, one "
                            f"for the test part and one to train on.")
        ordered = _by_prompt_hash(full.pairs, "test")
        test = ordered[:_cap(test_size, len(ordered), "test part", source)]
        rest = ordered[len(test):]
    else:
        train_all, test_all = load_pairs(source, "train"), load_pairs(source, "test")
        skipped = train_all.skipped + test_all.skipped
        test = _by_prompt_hash(test_all.pairs, "test")[:test_size]
        rest = train_all.pairs
    test_prompts = {p.prompt for p in test}
    kept = [p for p in rest if p.prompt not in test_prompts]
    dropped = len(rest) - len(kept)
    sides = {"policy": [], "judge": []}
    for p in kept:
        sides[prompt_side(p.prompt, judge_share)].append(p)
    return test, sides, skipped, dropped


def policy_pairs(source: str, size: int, seed: int, judge_share: float = DEFAULT_JUDGE_SHARE,
                 test_size: int = DEFAULT_TEST_SIZE) -> PairSet:
    """A seeded subset of the POLICY side's pairs (never the judge side, never the test part of `test_size`
    pairs): what SFT and DPO train on. Its `skipped` counts the unusable rows of the whole dataset."""
    _, sides, skipped, _ = _test_and_sides(source, test_size, judge_share)
    pairs = sides["policy"]
    if not pairs:
        raise UserError(f"dataset {source} leaves no pairs on the policy side; use a larger file.")
    rng = random.Random(seed)
    return PairSet(rng.sample(pairs, min(size, len(pairs))), Counter(skipped), source)


def pairs_by_id(source: str, ids: list[str], hub_split: str = "test", what: str = "test pairs") -> list[PreferencePair]:
    """The pairs of `source` with these ids, in their order (a saved split re-read); one sentence if any is gone."""
    pairs = load_pairs(source) if is_local(source) else load_pairs(source, hub_split)
    by_id = {pair_id(p): p for p in pairs.pairs}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"dataset {source} no longer holds {len(missing)} of the {len(ids)} {what} named in the "
                        f"checkpoint's {SPLIT_FILE} (first missing id {missing[0]}); evaluate on the data the model "
                        f"was trained on (--dataset), or retrain it on this data.")
    return [by_id[i] for i in ids]


def policy_training_pairs(source: str, size: int, seed: int, judge_share: float | None = None,
                          judge_dir=None) -> PairSet:
    """What SFT and DPO train on: policy_pairs of the judge's own split, and never a pair the judge trained or picked
    its epoch on. The judge's split.json (judge_dir, default the store's judge) gives its judge share and test size,
    and the ids of its train and dev pairs, which are left out whatever the share; `judge_share` overrides the share
    (e.g. a judge trained elsewhere with --judge-share). Without a judge split: `judge_share` or the default."""
    import json
    from pathlib import Path

    if judge_dir is None:
        from rlhflab.config import JUDGE_DIR as judge_dir
    record = None
    split_path = Path(judge_dir) / SPLIT_FILE
    if split_path.is_file():
        try:
            record = json.loads(split_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
    same_data = isinstance(record, dict) and (
        record.get("dataset") == source or (is_local(source) and is_local(str(record.get("dataset", "")))
                                            and Path(source).resolve() == Path(record["dataset"]).resolve()))
    share = judge_share if judge_share is not None else (
        float(record["judge_share"]) if same_data and "judge_share" in record else DEFAULT_JUDGE_SHARE)
    test_size = int(record.get("sizes", {}).get("test") or DEFAULT_TEST_SIZE) if same_data else DEFAULT_TEST_SIZE
    _, sides, skipped, _ = _test_and_sides(source, test_size, share)
    judged = set()
    if same_data:
        ids = record.get("ids", {})
        judged = set(ids.get("train", [])) | set(ids.get("dev", []))
    pairs = [p for p in sides["policy"] if pair_id(p) not in judged]
    if not pairs:
        raise UserError(f"dataset {source} leaves no pairs on the policy side (judge share {share}); use a larger "
                        f"file or a smaller --judge-share.")
    rng = random.Random(seed)
    return PairSet(rng.sample(pairs, min(size, len(pairs))), Counter(skipped), source)
