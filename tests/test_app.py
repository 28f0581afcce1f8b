"""The Gradio app driven through gradio_client: every api_name, bad input, missing and corrupt checkpoints,
concurrent clients. Checkpoints are tiny (2 layers, hidden 64) and written here into a temporary store."""
from __future__ import annotations

import json
import math
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

BASE_SETTINGS = dict(temperature=0.7, top_k=50, top_p=0.95, repetition_penalty=1.1, no_repeat_ngram_size=0,
                     max_new_tokens=12, seed=0, greedy=False, best_of_n=1)
RATING_PROMPTS = ["Name a fruit.", "What is two plus two?"]


# ---------------------------------------------------------------- tiny checkpoints


def _metrics(n: int, kl0: float) -> list[dict]:
    return [{"step": i + 1, "episode": 8 * (i + 1), "kl_per_token": kl0 * (i + 1),
             "kl_per_sequence": kl0 * (i + 1) * 30, "kl_coef": 0.1 - 0.005 * i, "score": 0.1 * i, "response_tokens_mean": 30.0} for i in range(n)]


def _overopt(n: int) -> list[dict]:
    """Held-out checks of a run whose training-RM score keeps rising while the judge's turns down."""
    return [{"step": 4 * i, "episode": 32 * i, "n_prompts": 8, "kl_exact_per_token": 0.02 * i,
             "kl_exact_ci": [0.015 * i, 0.025 * i], "rm_score_mean": 0.5 * i,
             "rm_score_ci": [0.5 * i - 0.1, 0.5 * i + 0.1],
             "judge_score_mean": 0.2 * i - 0.08 * i * i, "judge_score_ci": [0.2 * i - 0.08 * i * i - 0.1,
                                                                           0.2 * i - 0.08 * i * i + 0.1],
             "response_tokens_mean": 30.0, "temperature": 0.7, "judge_model": "judge", "reward_model": "reward"}
            for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_reward(folder: Path, tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    model.config.pad_token_id = 0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# Tiny reward model\n\nTest fixture.\n")


def write_full(folder: Path, tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(2)
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():  # a little different from the base, as a PPO run would be
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    _write_jsonl(folder / "metrics.jsonl", _metrics(6, 0.01))
    _write_jsonl(folder / "overopt.jsonl", _overopt(4))
    (folder / "README.md").write_text("# Tiny full PPO policy\n\nTest fixture.\n")


def write_lora(folder: Path, tiny_llama_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(3)
    base = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)  # non-zero B: the adapter changes the outputs
    get_peft_model(base, config).save_pretrained(folder)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tiny_llama_dir)
    cfg_path.write_text(json.dumps(cfg))
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    _write_jsonl(folder / "metrics.jsonl", _metrics(5, 0.015))
    (folder / "README.md").write_text("# Tiny LoRA PPO policy\n\nTest fixture.\n")


def write_dcgan(folder: Path) -> None:
    import torch

    from rlhflab.gan.data import PHANTOM_SOURCE
    from rlhflab.gan.networks import Generator, save_generator

    torch.manual_seed(4)
    save_generator(folder, Generator(100, 8), {"data_source": PHANTOM_SOURCE, "is_phantom": True})
    (folder / "README.md").write_text("# DCGAN — PHANTOM-trained (not real X-rays)\n\nTest fixture.\n")


def write_eval(folder: Path) -> None:
    from rlhflab.store.ratings import RatingsStore

    folder.mkdir(parents=True, exist_ok=True)
    results = {"command": "python eval/evaluate.py --profile demo", "settings": {"seed": 1234}, "num_prompts": 2,
               "policies": {"base": {"reward_mean": [0.1, -0.1, 0.3], "response_tokens_mean": [20, 18, 22], "n": 2},
                            "full": {"reward_mean": [0.4, 0.2, 0.6], "response_tokens_mean": [25, 22, 28], "n": 2,
                                     "gain_vs_base": [0.3, 0.1, 0.5], "win_rate_vs_base": [0.7, 0.5, 0.9],
                                     "kl_per_token_to_base": [0.05, 0.03, 0.07],
                                     "judge_gain_vs_base": [-0.12, -0.3, 0.05],
                                     "judge_win_rate_vs_base": [0.4, 0.2, 0.6],
                                     "judge_wins_ties_losses_vs_base": [1, 0, 1],
                                     "length_controlled_gain_vs_base": [-0.2, -0.4, 0.0],
                                     "length_controlled_scorer": "judge"},
                            "lora": {"reward_mean": [0.2, 0.0, 0.4], "response_tokens_mean": [21, 19, 23], "n": 2,
                                     "gain_vs_base": [0.1, -0.1, 0.3], "win_rate_vs_base": [0.55, 0.3, 0.8],
                                     "kl_per_token_to_base": [0.02, 0.01, 0.03]}},
               "examples": [{"prompt": p, "base": "b", "full": "f", "lora": "l"} for p in RATING_PROMPTS],
               "judge": {"model": "checkpoints/judge", "available": True, "accuracy": [0.7, 0.6, 0.8]},
               "reward_model": {"model": "checkpoints/reward", "accuracy": [0.9, 0.8, 0.95]},
               "agreement": {"reward_model_vs_judge": {"agree": 3, "n": 4, "rate": [0.75, 0.3, 0.95]},
                             "raters": {"comparisons": 0, "rater_ties": 0}}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "report.md").write_text("# Evaluation report\n\nFull PPO gains 0.3 over base.\n")
    RatingsStore(folder / "ratings.sqlite").replace_items(
        [{"prompt_index": i, "prompt": p, "policy": pol, "response": f"{pol} answer to {p}"}
         for i, p in enumerate(RATING_PROMPTS) for pol in ("base", "full", "lora")])


def write_tiny_checkpoints(root: Path, tiny_llama_dir: Path,
                           kinds=("reward", "full", "lora", "dcgan", "eval")) -> Path:
    """A checkpoint store in the real layout (reward, ppo-full, ppo-lora, dcgan, eval) with tiny models."""
    root.mkdir(parents=True, exist_ok=True)
    writers = {"reward": lambda: write_reward(root / "reward", tiny_llama_dir),
               "full": lambda: write_full(root / "ppo-full", tiny_llama_dir),
               "lora": lambda: write_lora(root / "ppo-lora", tiny_llama_dir),
               "dcgan": lambda: write_dcgan(root / "dcgan"),
               "eval": lambda: write_eval(root / "eval")}
    for kind in kinds:
        writers[kind]()
    return root


# ---------------------------------------------------------------- running the app


class FakeScheduler:
    """Stands in for huggingface_hub.CommitScheduler (no network): records what it was asked to sync."""

    instances: list["FakeScheduler"] = []

    def __init__(self, *, repo_id, repo_type, folder_path, every, token):
        self.repo_id, self.repo_type, self.folder_path, self.every = repo_id, repo_type, folder_path, every
        self.lock = threading.Lock()
        FakeScheduler.instances.append(self)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(env: dict, **build_kwargs):
    """The app launched on a free 127.0.0.1 port in this process; yields (registry, url)."""
    from space.demo import build_demo, launch_kwargs
    from space.registry import Registry

    registry = Registry(env=env)
    demo = build_demo(registry, **build_kwargs)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **launch_kwargs(registry))
    try:
        yield registry, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def make_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def text_of(message: dict) -> str:
    """A chatbot message's text (content may be a string or a list of content parts)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def chat_args(message: str, policy: str = "base", **overrides) -> list:
    s = {**BASE_SETTINGS, **overrides}
    return [message, policy, *s.values()]


THREE = ["base", "full", "lora"]


def compare_args(message: str, policies=tuple(THREE), **overrides) -> list:
    s = {**BASE_SETTINGS, **overrides}
    return [message, list(policies), *s.values()]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_dir) -> Path:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"), tiny_llama_dir)


@pytest.fixture(scope="module")
def app(store, tiny_llama_dir):
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1",
           "RLHFLAB_RATINGS_REPO": "someone/ratings", "HF_TOKEN": "hf_test_token"}
    with running_app(env, rating_scheduler_cls=FakeScheduler) as (registry, url):
        yield registry, url


@pytest.fixture(scope="module")
def client(app):
    return make_client(app[1])


# ---------------------------------------------------------------- every api_name


def test_every_required_endpoint_is_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("/chat", "/compare", "/score", "/compare_responses", "/kl_curves", "/overopt_curves",
                 "/sample_xrays", "/rate",
                 "/regenerate", "/clear", "/interpolate", "/next_item", "/ratings_table", "/ratings_csv",
                 "/evaluation", "/about", "/xray_card"):
        assert name in names, f"{name} missing from {sorted(names)}"


def test_chat_streams_an_answer_with_its_reward(client):
    job = client.submit(*chat_args("Hello, who are you?", max_new_tokens=64), api_name="/chat")
    chatbot, details, message_box = job.result(timeout=60)
    updates = job.outputs()
    assert len(updates) >= 3, "the answer should arrive in several streamed updates"
    assert message_box == ""
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    assert details["answer"].strip() and details["error"] is None
    assert isinstance(details["reward"], float) and math.isfinite(details["reward"])
    assert f"{details['reward']:+.3f}" in text_of(chatbot[-1]) and "reward-model score" in text_of(chatbot[-1])
    assert details["tokens"] > 0


def test_chat_keeps_history_regenerates_and_clears(app):
    c = make_client(app[1])
    c.predict(*chat_args("First question?"), api_name="/chat")
    chatbot, details, _ = c.predict(*chat_args("And a follow-up?", seed=1), api_name="/chat")
    assert [m["role"] for m in chatbot] == ["user", "assistant"] * 2
    assert text_of(chatbot[2]).startswith("And a follow-up?")
    single, base_cb, full_cb, lora_cb, _, regen = c.predict("one", "base", THREE,
                                                            *{**BASE_SETTINGS, "seed": 7}.values(),
                                                            api_name="/regenerate")
    assert len(single) == 4 and regen["error"] is None and regen["policy"] == "base"
    assert text_of(single[2]).startswith("And a follow-up?")
    cleared = c.predict("one", "base", [], api_name="/clear")
    assert cleared[0] == []
    # the other sides were never touched
    assert cleared[2] == [] and cleared[3] == []


def test_compare_streams_three_answers(client):
    job = client.submit(*compare_args("Tell me a fact."), api_name="/compare")
    base_cb, full_cb, lora_cb, fourth, details, _ = job.result(timeout=90)
    assert fourth == [], "an unused side stays empty"
    assert len(job.outputs()) > 3
    answers = {}
    for name, cb in (("base", base_cb), ("full", full_cb), ("lora", lora_cb)):
        assert [m["role"] for m in cb[-2:]] == ["user", "assistant"] and text_of(cb[-2]) == "Tell me a fact."
        assert details[name]["error"] is None and details[name]["answer"].strip()
        assert isinstance(details[name]["reward"], float)
        answers[name] = details[name]["answer"]
    assert len(set(answers.values())) == 3, f"the three policies should answer differently: {answers}"


def test_best_of_n_reranks_by_reward(client):
    _, details, _ = client.predict(*chat_args("Give me advice.", best_of_n=3), api_name="/chat")
    candidates = details["candidates"]
    assert len(candidates) == 3 and sum(c["chosen"] for c in candidates) == 1
    best = max(candidates, key=lambda c: c["reward"])
    assert best["chosen"] and details["reward"] == best["reward"] and details["answer"] == best["answer"]


def test_score_and_compare_responses_agree(client):
    prompt, a, b = "How do I boil an egg?", "Put it in boiling water for 8 minutes.", "Eggs are round."
    s_a = client.predict(prompt, a, api_name="/score")
    s_b = client.predict(prompt, b, api_name="/score")
    assert isinstance(s_a, float) and isinstance(s_b, float)
    r_a, r_b, p, verdict = client.predict(prompt, a, b, api_name="/compare_responses")
    assert 0 < p < 1
    assert r_a == pytest.approx(s_a, abs=1e-3) and r_b == pytest.approx(s_b, abs=1e-3)
    assert p == pytest.approx(1 / (1 + math.exp(-(r_a - r_b))), abs=1e-3)
    assert "P(A" in verdict


def test_kl_curves_returns_a_plot(client):
    for x_axis, units in (("step", "token"), ("episode", "sequence")):
        plot, summary, notice = client.predict(x_axis, units, api_name="/kl_curves")
        figure = json.loads(plot["plot"]) if isinstance(plot.get("plot"), str) else plot["plot"]
        names = {trace.get("name") for trace in figure["data"]}
        assert {"ppo-full KL", "ppo-lora KL", "ppo-full score", "ppo-lora β"} <= names
        title = json.dumps(figure["layout"])
        assert ("nats / token" if units == "token" else "nats / sequence") in title
        assert ("training step" if x_axis == "step" else "episode") in title
        assert "ppo-full" in summary and "training/ppo.py" not in notice


def test_overoptimisation_curve_draws_rm_and_judge_against_kl(client):
    plot, notice = client.predict(api_name="/overopt_curves")
    figure = json.loads(plot["plot"]) if isinstance(plot.get("plot"), str) else plot["plot"]
    traces = {trace.get("name"): trace for trace in figure["data"]}
    assert set(traces) == {"ppo-full training RM", "ppo-full judge"}
    assert traces["ppo-full training RM"]["x"] == pytest.approx([0.0, 0.02, 0.04, 0.06])
    assert traces["ppo-full judge"]["y"] == pytest.approx([0.2 * i - 0.08 * i * i for i in range(4)])
    assert traces["ppo-full judge"]["line"]["dash"] == "dash"
    assert "nats / token" in json.dumps(figure["layout"])
    assert "LoRA" in notice and "overopt.jsonl" in notice, "the LoRA run has no held-out checks and says so"


def test_sample_xrays_returns_an_image_and_png(client, tmp_path):
    from PIL import Image

    image, png, caption = client.predict(3, api_name="/sample_xrays")
    assert "PHANTOM" in caption
    path = Path(image["path"] if isinstance(image, dict) else image)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == ((8 * 30 + 2) * 4, (4 * 30 + 2) * 4)
    png_path = Path(png["path"] if isinstance(png, dict) else png)
    with Image.open(png_path) as im:
        assert im.size == (8 * 30 + 2, 4 * 30 + 2)
    again, _, _ = client.predict(3, api_name="/sample_xrays")
    with Image.open(path) as first, Image.open(Path(again["path"] if isinstance(again, dict) else again)) as second:
        assert first.tobytes() == second.tobytes(), "same seed, same grid"
    strip = client.predict(0, 1, 6, api_name="/interpolate")
    with Image.open(Path(strip["path"] if isinstance(strip, dict) else strip)) as im:
        assert im.size == ((6 * 30 + 2) * 4, (30 + 2) * 4)
    label, card = client.predict(api_name="/xray_card")
    assert "PHANTOM" in label and "PHANTOM" in card


def test_rate_is_stored_visible_in_aggregate_and_synced(app):
    registry, url = app
    c = make_client(url)
    task = c.predict(api_name="/next_item")
    prompt_md = task[0]
    assert any(p in prompt_md for p in RATING_PROMPTS)
    shown = task[1:4]
    assert all("answer to" in t for t in shown), "three responses shown"
    assert not any(pol in t.split("\n\n", 1)[0] for t in shown for pol in ("base", "full", "lora")), "policy hidden"
    scores = [4, 5, 3, 4, 5] + [2, 2, 2, 2, 2] + [None] * 5  # the third response left unrated
    out = c.predict(*scores, api_name="/rate")
    aggregate, status = out[0], out[-1]
    assert "Saved 2 rating(s)" in status
    rows = registry.ratings_store().aggregate()
    assert sum(r["n"] for r in rows) == 2
    assert "| policy |" in aggregate and aggregate == c.predict(api_name="/ratings_table")
    csv_file = c.predict(api_name="/ratings_csv")
    csv_text = Path(csv_file["path"] if isinstance(csv_file, dict) else csv_file).read_text()
    assert csv_text.splitlines()[0].startswith("rating_id,created,rater,policy") and len(csv_text.splitlines()) == 3
    # the app's export names policies but never the response texts (it must not unblind what is left to rate)
    assert "response" not in csv_text.splitlines()[0]
    responses = [t.split("\n\n", 1)[-1].strip() for t in shown]
    assert all(len(r) > 10 for r in responses) and not any(r in csv_text for r in responses)
    synced = list((Path(registry.resolve("eval").source) / "ratings-hub").glob("ratings-*.jsonl"))
    records = [json.loads(line) for f in synced for line in f.read_text().splitlines()]
    assert len(records) == 2 and len({r["rater"] for r in records}) == 1
    assert records[0]["rater"].startswith("session:"), "the rater is the browser session, not a typed name"
    scheduler = FakeScheduler.instances[-1]
    assert scheduler.repo_type == "dataset" and scheduler.repo_id == "someone/ratings"


def test_rate_rejects_half_rated_response(client):
    client.predict(api_name="/next_item")
    with pytest.raises(Exception, match="missing"):
        client.predict(*([3, 3, None, 3, 3] + [None] * 10), api_name="/rate")


def test_evaluation_and_about(client):
    plot, table, examples, notice = client.predict(api_name="/evaluation")
    assert notice == "" and "Evaluation report" not in table, "the tables once, not the whole report again"
    figure = json.loads(plot["plot"]) if isinstance(plot, dict) and isinstance(plot.get("plot"), str) else plot
    assert "Reward–KL frontier" in json.dumps(figure, ensure_ascii=False)
    assert "**Judge independence**" in table and "second reward model" in table, "independence not measured here"
    assert "/tmp" not in table and "/checkpoints" not in table
    assert "+0.400 [+0.200, +0.600]" in table and "70.0 % [50.0, 90.0]" in table
    assert "judge gain vs base" in table and "-0.120 [-0.300, +0.050]" in table
    assert "40.0 % [20.0, 60.0] (1/0/1)" in table
    assert "-0.200 [-0.400, +0.000] (judge)" in table and "held-out accuracy 70.0 % [60.0, 80.0]" in table
    assert "75.0 % [30.0, 95.0] (3 of 4)" in table and "no ratings yet" in table
    rows = examples["data"] if isinstance(examples, dict) else examples
    assert [r[0] for r in rows] == RATING_PROMPTS
    about = client.predict(api_name="/about")
    assert "loaded" in about and "Tiny reward model" in about


# ---------------------------------------------------------------- bad input


def test_empty_message_is_refused_politely(client):
    chatbot, details, _ = client.predict(*chat_args("   "), api_name="/chat")
    assert "Please type a message" in details["error"]
    *_, details, _ = client.predict(*compare_args(""), api_name="/compare")
    assert "Please type a message" in details["error"]


def test_long_message_is_truncated_and_says_so(client):
    message = "Please summarise this. " + "lorem ipsum dolor sit amet " * 1900  # > 50,000 characters
    assert len(message) > 50_000
    chatbot, details, _ = client.predict(*chat_args(message, max_new_tokens=8), api_name="/chat")
    assert details["error"] is None and details["answer"]
    assert any("truncated" in note for note in details["notes"])
    assert "truncated" in text_of(chatbot[-1])
    assert len(text_of(chatbot[-2])) < 3000, "the huge message is shortened on screen"


@pytest.mark.parametrize("setting, value", [("temperature", 5.0), ("top_p", 0.0), ("max_new_tokens", 100000),
                                            ("best_of_n", 9)])
def test_out_of_range_setting_is_rejected_by_name(client, setting, value):
    with pytest.raises(Exception, match=setting):
        client.predict(*chat_args("hi", **{setting: value}), api_name="/chat")
    with pytest.raises(Exception, match=setting):
        client.predict(*compare_args("hi", **{setting: value}), api_name="/compare")


def test_concurrent_clients_are_all_answered(app):
    url = app[1]
    results, errors = {}, []

    def worker(i, policy):
        try:
            _, details, _ = make_client(url).predict(*chat_args(f"Question {i}?", policy, seed=i), api_name="/chat")
            results[i] = details
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, p)) for i, p in enumerate(["base", "full", "lora", "base"])]
    for t in threads:
        t.start()
    score = make_client(url).predict("q", "a", api_name="/score")
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 4 and isinstance(score, float)
    assert all(d["answer"] and d["error"] is None for d in results.values())


# ---------------------------------------------------------------- missing and corrupt checkpoints


@pytest.fixture(scope="module")
def degraded_app(tmp_path_factory, tiny_llama_dir):
    """No full-PPO, no DCGAN, no evaluation; a corrupt reward model; the LoRA run present."""
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("degraded"), tiny_llama_dir, kinds=("lora",))
    (root / "reward").mkdir()
    (root / "reward" / "config.json").write_text("{ not json")
    env = {"RLHFLAB_CHECKPOINTS": str(root), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    with running_app(env) as (registry, url):
        yield registry, make_client(url)


def test_missing_policy_explains_and_others_still_work(degraded_app):
    registry, c = degraded_app
    chatbot, details, _ = c.predict(*chat_args("Hi?", "full"), api_name="/chat")
    assert "python training/ppo.py --mode full --profile demo" in details["error"]
    assert "RLHFLAB_FULL_REPO" in text_of(chatbot[-1])
    chatbot, details, _ = c.predict(*chat_args("Hi?", "lora"), api_name="/chat")
    assert details["error"] is None and details["answer"]
    assert details["reward"] is None and "could not be loaded" in details["reward_error"]
    assert "no reward score" in text_of(chatbot[-1])
    base_cb, full_cb, lora_cb, _, details, _ = c.predict(*compare_args("Hello"), api_name="/compare")
    assert details["full"]["error"] and details["base"]["answer"] and details["lora"]["answer"]
    # best-of-n without a usable reward model falls back to one answer and says why
    _, details, _ = c.predict(*chat_args("Hi?", "base", best_of_n=3), api_name="/chat")
    assert details["answer"] and details["candidates"] is None


def test_corrupt_reward_model_degrades_only_its_tab(degraded_app):
    registry, c = degraded_app
    with pytest.raises(Exception, match="could not be loaded.*python training/reward.py --profile demo"):
        c.predict("q", "a", api_name="/score")
    with pytest.raises(Exception, match="could not be loaded"):
        c.predict("q", "a", "b", api_name="/compare_responses")


def test_missing_dcgan_eval_and_curves_explain(degraded_app):
    registry, c = degraded_app
    with pytest.raises(Exception, match=r"python training/dcgan\.py --profile demo"):
        c.predict(0, api_name="/sample_xrays")
    notice, card = c.predict(api_name="/xray_card")
    assert "python training/dcgan.py --profile demo" in notice
    plot, summary, notice = c.predict("step", "token", api_name="/kl_curves")
    assert "ppo-lora" in summary and "python training/ppo.py --mode full --profile demo" in notice
    *_, eval_notice = c.predict(api_name="/evaluation")
    assert "python eval/evaluate.py --profile demo" in eval_notice
    task = c.predict(api_name="/next_item")
    assert "python eval/evaluate.py --profile demo" in task[-1]
    assert "python training/dcgan.py --profile demo" in c.predict(api_name="/about")
    assert not (Path(registry.checkpoints_dir) / "eval").exists(), "browsing must not create an empty eval folder"


# ---------------------------------------------------------------- pieces without a server


def test_hub_repo_ids_resolve_after_the_local_store_and_fail_gracefully_offline(tmp_path, tiny_llama_dir):
    from space.registry import CheckpointUnavailable, Registry

    env = {"RLHFLAB_CHECKPOINTS": str(tmp_path), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir),
           "RLHFLAB_FULL_REPO": "someone/ppo-full", "RLHFLAB_DCGAN_REPO": "someone/dcgan"}
    registry = Registry(env=env)
    assert registry.resolve("full").origin == "hub" and registry.resolve("reward").origin == "missing"
    assert "python training/reward.py --profile demo" in registry.notice("reward")
    with pytest.raises(CheckpointUnavailable, match=r"Hub repo `someone/ppo-full`.*could not be loaded"):
        with registry.policy("full"):
            pass
    with registry.policy("base") as (model, tokenizer):  # the failure stays with its own checkpoint
        assert model is not None and tokenizer is not None
    write_dcgan(tmp_path / "dcgan")  # a local folder wins over the Hub id
    assert registry.resolve("dcgan").origin == "local"
    assert registry.generator().config["is_phantom"] is True


def test_side_by_side_order_shares_weights_in_turn():
    from space.chat import interleave

    def stream(name, n):
        for i in range(n):
            yield f"{name}{i}"
        return {"policy": name}

    events = list(interleave({"base": stream("base", 3), "full": stream("full", 3), "lora": stream("lora", 2)},
                             [["full"], ["base", "lora"]]))
    order = [(side, text) for side, text, _ in events if text]
    assert order[:2] == [("full", "full0"), ("base", "base0")], "full streams alongside base"
    first_lora = next(i for i, (side, _) in enumerate(order) if side == "lora")
    assert all(side != "base" for side, _ in order[first_lora:]), "LoRA starts only after base is done"
    assert {side for side, _, result in events if result} == {"base", "full", "lora"}
