"""Human-evaluation tab: blind 1–5 ratings of the stored responses (policy hidden, order shuffled), saved in the
SQLite RatingsStore, a live aggregate table and a CSV export. The rater is who space.identity says (a signed-in
Hugging Face user on a Space, else the browser session), and rates each response once.

On a Space the disk is not persistent: with RLHFLAB_RATINGS_REPO and HF_TOKEN set, every rating is also appended
to a JSONL file that huggingface_hub's CommitScheduler pushes to that Hub dataset repo every few minutes.
"""
from __future__ import annotations

import inspect
import json
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.store.ratings import CRITERIA, CRITERIA_LABELS, aggregate_markdown
from space.identity import login_button, oauth_required, request_identity
from space.registry import Registry

MAX_RESPONSES = 3
SCORES = [1, 2, 3, 4, 5]
SYNC_FOLDER = "ratings-hub"
SYNC_EVERY_MINUTES = 5
AGGREGATE_REFRESH_S = 15


def rating_parameter_names() -> list[str]:
    """/rate's inputs as its API names them: response_a_coherence … response_c_harmlessness, task."""
    return [*[f"response_{chr(97 + i)}_{c}" for i in range(MAX_RESPONSES) for c in CRITERIA], "task"]


def named_parameters(fn, names: list[str], injected: dict | None = None):
    """`fn(*values)` with a signature that names each value, so gradio_client's view_api shows these names
    instead of param_1 … param_N (Gradio names API parameters after the handler's signature). `injected`: name ->
    type of the parameters Gradio fills in itself after them (gr.Request, gr.OAuthProfile | None)."""
    injected = injected or {}
    fn.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                          for n in [*names, *injected]])
    fn.__annotations__ = dict(injected)
    return fn


def is_score(value) -> bool:
    """A radio's value: unrated (None or empty) or one of SCORES (a bool is not a score, though True == 1)."""
    return value in (None, "") or (not isinstance(value, bool) and isinstance(value, (int, float))
                                   and value in SCORES)


class RatingsSync:
    """Appends one JSON record per rating to this process's own file in a folder CommitScheduler uploads.

    Append-only files written under `scheduler.lock` are the pattern the scheduler is built for: it uploads
    each file up to the size it saw under the lock, so a record is never half-uploaded.
    """

    def __init__(self, folder: str | Path, repo_id: str, token: str, every_minutes: float = SYNC_EVERY_MINUTES,
                 scheduler_cls=None, prefix: str = "ratings"):
        if scheduler_cls is None:
            from huggingface_hub import CommitScheduler as scheduler_cls
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.repo_id = repo_id
        self.scheduler = scheduler_cls(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                       every=every_minutes, token=token)
        self.path = self.folder / f"{prefix}-{uuid.uuid4().hex[:12]}.jsonl"

    def append(self, record: dict) -> None:
        with self.scheduler.lock:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def make_sync(registry: Registry, scheduler_cls=None) -> tuple[RatingsSync | None, str]:
    """(sync or None, one line saying where ratings go)."""
    repo = (registry.env.get("RLHFLAB_RATINGS_REPO") or "").strip()
    token = (registry.env.get("HF_TOKEN") or "").strip()
    if not repo or not token:
        return None, ("Ratings are kept in the local SQLite store; set RLHFLAB_RATINGS_REPO and HF_TOKEN to also "
                      "sync them to a Hub dataset repo.")
    res = registry.resolve("eval")
    if res.origin != "local":
        return None, f"Hub sync to `{repo}` is off: there is no local evaluation folder to keep ratings in."
    try:
        sync = RatingsSync(Path(res.source) / SYNC_FOLDER, repo, token, scheduler_cls=scheduler_cls)
    except Exception as exc:  # no network, bad token, no write access: rating still works locally
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        return None, f"⚠️ Hub sync to `{repo}` is off ({type(exc).__name__}: {detail}); ratings stay local."
    return sync, f"Every rating is also synced to the Hub dataset `{repo}` (every {SYNC_EVERY_MINUTES} minutes)."


def build_rating_tab(registry: Registry, demo: gr.Blocks, scheduler_cls=None) -> None:
    """The Human evaluation tab."""
    sync, sync_text = make_sync(registry, scheduler_cls)
    export_dir = Path(tempfile.mkdtemp(prefix="rlhflab-ratings-"))
    with gr.Tab("Human evaluation", id="rating"):
        notice = gr.Markdown(elem_id="rating-notice")
        gr.Markdown("Rate each response 1–5 on every criterion (5 = best; for hallucination/toxicity 5 = none). "
                    "Which policy wrote a response is hidden and the order is shuffled; each response is rated "
                    "once by each rater. " + sync_text
                    + (" **Sign in with Hugging Face to rate.**" if oauth_required(registry) else
                       " Outside a Space your ratings are recorded under this browser session."))
        login_button(registry)
        with gr.Row():
            next_btn = gr.Button("Next prompt", size="sm", scale=1)
        task = gr.State(None)
        prompt = gr.Markdown(elem_id="rating-prompt")
        groups, texts, radios = [], [], []
        for i in range(MAX_RESPONSES):
            with gr.Group(visible=False) as group:
                texts.append(gr.Markdown(elem_id=f"rating-response-{i}", padding=True))
                with gr.Row():
                    for c in CRITERIA:
                        radios.append(gr.Radio(SCORES, label=f"{chr(65 + i)} · {CRITERIA_LABELS[c]}", min_width=150,
                                                elem_classes="rating-radio"))
            groups.append(group)
        submit = gr.Button("Submit ratings", variant="primary", elem_id="rate-btn")
        status = gr.Markdown(elem_id="rating-status")
        gr.Markdown("### Aggregate (all raters)")
        aggregate = gr.Markdown(elem_id="rating-aggregate")
        refresh = gr.Button("Refresh table", size="sm")
        with gr.Accordion("Export all ratings (CSV: policy and scores per rating; the response texts stay out so "
                          "the export cannot unblind what is still to be rated — `python eval/evaluate.py --ratings` "
                          "writes the full table)", open=False):
            export = gr.Button("Export CSV", size="sm")
            csv_file = gr.File(label="ratings.csv", interactive=False)
        timer = gr.Timer(AGGREGATE_REFRESH_S)

    def store():
        try:
            return registry.ratings_store()
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def show_task(new_task: dict | None, message: str):
        """Outputs for one blind task: prompt, the responses, cleared radios, visible groups, state, notice."""
        responses = new_task["responses"][:MAX_RESPONSES] if new_task else []
        prompt_md = (f"**Prompt #{new_task['prompt_index']}**\n\n{new_task['prompt']}"
                     + ("\n\n*You have rated this prompt before; all prompts are rated equally often so far.*"
                        if new_task["rated_before"] else "")) if new_task else ""
        text_out = [f"**Response {chr(65 + i)}**\n\n{responses[i]['response']}" if i < len(responses) else ""
                    for i in range(MAX_RESPONSES)]
        group_out = [gr.Group(visible=i < len(responses)) for i in range(MAX_RESPONSES)]
        state = {"prompt_index": new_task["prompt_index"],
                 "item_ids": [r["item_id"] for r in responses]} if new_task else None
        return prompt_md, *text_out, *[None] * len(radios), *group_out, state, message

    def task_for(rater: str):
        res = registry.resolve("eval")
        if not res.available:
            return show_task(None, f"⚠️ {registry.missing_message(res)} It stores the items to rate.")
        try:
            ratings_store = registry.ratings_store()
            new_task = ratings_store.blind_task(rater, max_responses=MAX_RESPONSES, skip_rated=True)
            if new_task is None and ratings_store.items():
                return show_task(None, "You have rated every stored response — thank you. New ones appear when "
                                       "the evaluation is run again.")
        except UserError as exc:
            return show_task(None, f"⚠️ {exc}")
        if new_task is None:
            return show_task(None, "⚠️ There is nothing to rate yet: the ratings store has no items. Create them with "
                                   "`python eval/evaluate.py --profile demo`.")
        return show_task(new_task, "")

    def next_item(profile: gr.OAuthProfile | None, request: gr.Request):
        """A blind rating task: one stored prompt and the responses you have not rated yet, shuffled, policies
        hidden."""
        try:
            rater, _ = request_identity(registry, profile, request)
        except UserError as exc:
            return show_task(None, f"⚠️ {exc}")
        return task_for(rater)

    def ratings_table():
        """The model × criterion table of mean ratings."""
        if not registry.resolve("eval").available:
            return "No ratings yet (no evaluation folder)."
        try:
            return aggregate_markdown(registry.ratings_store().aggregate())
        except UserError as exc:
            return f"⚠️ {exc}"

    def rate(*values):
        """Store the ratings of the shown responses (each response: five scores 1–5), then show the next prompt."""
        *scores, current, profile, request = values
        try:
            rater, _ = request_identity(registry, profile, request)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        if not current or not current.get("item_ids"):
            raise gr.Error("Load a prompt to rate first (Next prompt).")
        bad = [f"Response {chr(65 + i // len(CRITERIA))} · {CRITERIA_LABELS[CRITERIA[i % len(CRITERIA)]]}: "
               f"a rating must be a whole number from 1 to 5, got {v!r}"
               for i, v in enumerate(scores) if not is_score(v)]
        if bad:
            raise gr.Error("; ".join(bad) + ".")
        ratings_store = store()
        problems = []
        chosen: list[tuple[str, dict]] = []
        for i, item_id in enumerate(current["item_ids"]):
            row = dict(zip(CRITERIA, scores[i * len(CRITERIA):(i + 1) * len(CRITERIA)]))
            given = [c for c, v in row.items() if v not in (None, "")]
            if not given:
                continue
            if len(given) < len(CRITERIA):
                missing = [CRITERIA_LABELS[c] for c in CRITERIA if c not in given]
                problems.append(f"response {chr(65 + i)} is missing {', '.join(missing)}")
            chosen.append((item_id, {c: None if v in (None, "") else int(v) for c, v in row.items()}))
        if problems:
            raise gr.Error("Rate every criterion of a response (or none of it): " + "; ".join(problems) + ".")
        if not chosen:
            raise gr.Error("Rate at least one response on all five criteria before submitting.")
        try:  # one transaction: a bad item stores none of this submission
            saved = ratings_store.add_ratings(chosen, rater, once_per_rater=True)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        for rating_id, (item_id, row) in zip(saved, chosen):
            if sync is not None:
                sync.append({"rating_id": rating_id, "item_id": item_id, "rater": rater,
                             "prompt_index": current["prompt_index"], **row,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        message = f"Saved {len(saved)} rating(s) for prompt #{current['prompt_index']}. Here is the next prompt."
        return ratings_table(), *task_for(rater)[:-1], message

    def ratings_csv():
        """All ratings as a CSV file (one row per rating: policy and scores, without the response texts)."""
        path = export_dir / f"ratings-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.csv"
        path.write_text(store().csv_text(with_responses=False), encoding="utf-8")
        return str(path)

    task_outputs = [prompt, *texts, *radios, *groups, task, notice]
    gr.on([demo.load, next_btn.click], next_item, None, task_outputs, api_name="next_item")
    # preprocess=False: rate() checks every score itself, and its message names the response and criterion
    # (the radio's own check would only say "Value: 6 is not in the list of choices").
    submit.click(named_parameters(rate, rating_parameter_names(),
                                  {"profile": gr.OAuthProfile | None, "request": gr.Request}), [*radios, task],
                 [aggregate, *task_outputs[:-1], status], api_name="rate", preprocess=False)
    gr.on([demo.load, refresh.click, timer.tick], ratings_table, None, [aggregate], api_name="ratings_table",
          show_progress="hidden")
    export.click(ratings_csv, None, [csv_file], api_name="ratings_csv")
