"""Every RL step's rollouts, kept (not overwritten): `rollouts.jsonl` in the run folder (the trainer's work folder
while it trains, copied into the checkpoint), one line per rollout:

- `step`: the training step whose rollouts these are; `write`: which write of that step (a resumed run repeats the
  steps after its last save: the reader keeps each step's latest write only);
- `prompt`: the prompt as the user wrote it (None when its key is not among the run's prompts);
- `response`: the sampled response text (special tokens dropped);
- `score`: the training reward model's score (as the trainer used it: an unfinished rollout closed with EOS);
- `kl_exact`: exact KL(policy ‖ reference) summed over the response's tokens (nats per sequence; Σ_v p log p/q at
  each position under softmax(logits / temperature), the same numbers as the step's `kl_exact_per_token`); null
  when the trainer measured no exact KL for the step;
- `tokens`: response tokens (end-of-turn token included when it ended); `cut`: it hit the token budget unfinished.

`append_rollouts(folder, step, records)` writes one step; `record_step_rollouts` builds a step's records from the
metrics record the trainer just wrote and the sequences rlhflab.measure.kl measured (one call per trainer);
`read_rollouts` / `rollout_steps` / `rollouts_at` read them back (the app's rollout browser)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ROLLOUTS_FILE = "rollouts.jsonl"
FIELDS = ("step", "prompt", "response", "score", "kl_exact", "tokens", "cut")


def append_rollouts(folder: str | Path, step: int, records: list[dict]) -> Path:
    """Append one step's rollout records to folder/rollouts.jsonl (created as needed); returns its path."""
    path = Path(folder) / ROLLOUTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write = time.time_ns()
    with open(path, "a", encoding="utf-8") as fh:
        for i, r in enumerate(records):
            fh.write(json.dumps({"step": int(step), "write": write, "index": i,
                                 **{k: r.get(k) for k in FIELDS if k != "step"}}, default=float) + "\n")
    return path


def read_rollouts(folder: str | Path) -> list[dict]:
    """Every rollout of the run folder, step by step; of a step written twice (a resumed run), the latest write."""
    path = Path(folder) / ROLLOUTS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    latest: dict[int, int] = {}
    for r in rows:
        latest[r["step"]] = max(latest.get(r["step"], 0), r.get("write") or 0)
    kept = [r for r in rows if (r.get("write") or 0) == latest[r["step"]]]
    return sorted(kept, key=lambda r: (r["step"], r.get("index", 0)))


def rollout_steps(folder: str | Path) -> list[int]:
    return sorted({r["step"] for r in read_rollouts(folder)})


def rollouts_at(folder: str | Path, step: int, sort_by: str = "score", descending: bool = True) -> list[dict]:
    """The rollouts of one step, sorted by `score`, `kl_exact`, `tokens` or as sampled (`index`); missing values
    last."""
    rows = [r for r in read_rollouts(folder) if r["step"] == step]
    if sort_by not in ("score", "kl_exact", "tokens", "index"):
        raise ValueError(f"sort_by must be score, kl_exact, tokens or index, got {sort_by!r}")
    present = [r for r in rows if isinstance(r.get(sort_by), (int, float))]
    absent = [r for r in rows if not isinstance(r.get(sort_by), (int, float))]
    return sorted(present, key=lambda r: r[sort_by], reverse=descending) + absent


def copy_rollouts(source: str | Path, folder: str | Path) -> None:
    """Copy the work folder's rollouts.jsonl into the checkpoint folder being written (nothing if there is none)."""
    path = Path(source) / ROLLOUTS_FILE
    if path.is_file():
        shutil.copy(path, Path(folder) / ROLLOUTS_FILE)


def keep_up_to(folder: str | Path, step: int) -> None:
    """On --resume: drop the rollouts of the steps after the last saved one (they run again)."""
    path = Path(folder) / ROLLOUTS_FILE
    if path.is_file():
        kept = [r for r in read_rollouts(folder) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def step_records(record: dict, rows: list[tuple[list[int], float]], tokenizer, prompts_by_key: dict,
                 stop_ids: set[int], max_new_tokens: int | None = None) -> list[dict]:
    """One step's rollout records from its metrics record (rollout_scores, rollout_prompts: this process's rollouts
    in sampling order) and the sequences kl_sums measured for it, in the same order (response token ids, exact KL).
    When the two counts differ (a step whose KL was not measured), the texts are not known either and the records
    carry the score and prompt only."""
    scores, keys = record.get("rollout_scores") or [], record.get("rollout_prompts") or []
    matched = len(rows) == len(scores)
    out = []
    for i, (score, key) in enumerate(zip(scores, keys)):
        entry = {"prompt": prompts_by_key.get(key), "score": score, "response": None, "kl_exact": None,
                 "tokens": None, "cut": None}
        if matched:
            ids, kl = rows[i]
            ended = bool(ids) and ids[-1] in stop_ids
            entry.update(response=tokenizer.decode(ids, skip_special_tokens=True), kl_exact=round(kl, 6),
                         tokens=len(ids), cut=not ended and (max_new_tokens is None or len(ids) >= max_new_tokens))
        out.append(entry)
    return out


TABLE_COLUMNS = ["step", "prompt", "response", "score", "kl_exact", "tokens", "cut"]


def report_rollouts(report_to: str | None, folder: str | Path, step: int, records: list[dict]) -> str | None:
    """Send one step's rollouts to the tracker as a table, where the tracker has tables: W&B and trackio (a Table
    logged under 'rollouts' into the run the trainer opened), TensorBoard (the table as Markdown text, tag
    'rollouts', in folder/runs). Nothing for 'none' or an unknown tracker, or when the tracker's package is missing
    or has no open run; returns what was done (for the log), None if nothing."""
    if not records or not report_to or report_to == "none":
        return None
    rows = [[step, *(r.get(k) for k in TABLE_COLUMNS[1:])] for r in records]
    try:
        if report_to == "wandb":
            import wandb

            if wandb.run is None:
                return None
            wandb.log({"rollouts": wandb.Table(columns=TABLE_COLUMNS, data=rows)}, commit=False)
            return "wandb table"
        if report_to == "trackio":
            import pandas as pd
            import trackio

            trackio.log({"rollouts": trackio.Table(dataframe=pd.DataFrame(rows, columns=TABLE_COLUMNS))})
            return "trackio table"
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            from rlhflab.store.cards import markdown_table

            text = markdown_table(TABLE_COLUMNS, [[str(x).replace("|", "\\|").replace("\n", " ") for x in row]
                                                  for row in rows])
            with SummaryWriter(log_dir=str(Path(folder) / "runs")) as writer:
                writer.add_text("rollouts", text, global_step=step)
            return "tensorboard text"
    except ImportError:
        return None
    return None


def record_step_rollouts(folder: str | Path, record: dict, tokenizer, prompts: list[str], queries: list[list[int]],
                         rows: list[tuple[list[int], float]], max_new_tokens: int | None = None,
                         report_to: str | None = None) -> None:
    """The trainers' one call, where they write a step's metrics record: append that step's rollouts (prompt,
    response, score, exact KL, length, cut) to folder/rollouts.jsonl, and with `report_to` send them to the tracker
    as a table (report_rollouts). `prompts` and `queries` are the run's training prompts and their token ids (the
    rollout_prompts keys are rlhflab.training.online.prompt_key of those)."""
    from rlhflab.training.online import prompt_key

    stop = {tokenizer.eos_token_id}
    if "<|im_end|>" in tokenizer.get_vocab():
        stop.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    by_key = {prompt_key(list(q)): p for p, q in zip(prompts, queries)}
    records = step_records(record, rows, tokenizer, by_key, stop, max_new_tokens)
    if records:
        append_rollouts(folder, record["step"], records)
        report_rollouts(report_to, folder, record["step"], records)
