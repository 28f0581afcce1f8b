"""Security properties: weights only from safetensors, the Hub token never printed or written, parameterised
rating SQL, blind ratings that cannot be attributed to a model before submission, and a loopback-only default."""
from __future__ import annotations

import ast
import http.server
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from rlhflab.errors import UserError
from rlhflab.store.ratings import CRITERIA, RatingsStore
from tests.test_app import FakeScheduler, make_client, running_app, write_tiny_checkpoints

REPO = Path(__file__).resolve().parent.parent
SCANNED = [REPO / "app.py", *[p for d in ("rlhflab", "space", "training", "eval", "bench")
                              for p in sorted((REPO / d).rglob("*.py"))]]
FAKE_TOKEN = "hf_FAKEtoken1234567890abcdef"
INJECTION = "x'); DROP TABLE ratings;--"
POLICY_NAMES = ("base", "full", "lora", "ppo-full", "ppo-lora", "Full PPO", "LoRA PPO", "Base model")


# ---------------------------------------------------------------- (1) weights only from safetensors


def unsafe_loading(source: str) -> list[str]:
    """Calls in `source` that could unpickle or run repository code: torch.load without weights_only=True,
    pickle/joblib/dill loads, numpy loads with allow_pickle=True, and trust_remote_code=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            is_true = lambda key: isinstance(kwargs.get(key), ast.Constant) and kwargs[key].value is True  # noqa: E731
            if owner == "torch" and name == "load" and not is_true("weights_only"):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if owner in ("pickle", "cPickle", "joblib", "dill", "cloudpickle") and name in ("load", "loads"):
                found.append(f"line {node.lineno}: {owner}.{name}")
            if name == "load" and owner in ("np", "numpy") and is_true("allow_pickle"):
                found.append(f"line {node.lineno}: numpy load with allow_pickle=True")
            if is_true("trust_remote_code"):
                found.append(f"line {node.lineno}: trust_remote_code=True")
        if isinstance(node, ast.Dict):  # from_pretrained(**{"trust_remote_code": True})
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and \
                        not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"line {node.lineno}: trust_remote_code in a dict")
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "torch") and \
                any(a.name in ("load", "loads", "Unpickler") for a in node.names):
            found.append(f"line {node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return found


def test_the_scanner_flags_each_unsafe_pattern():
    bad = ("import torch, pickle, numpy as np\n"
           "torch.load('a.pt')\ntorch.load('a.pt', weights_only=False)\npickle.load(open('f', 'rb'))\n"
           "pickle.loads(b'')\nnp.load('x.npy', allow_pickle=True)\n"
           "AutoModel.from_pretrained('x', trust_remote_code=True)\nf(**{'trust_remote_code': True})\n"
           "from torch import load\n")
    assert len(unsafe_loading(bad)) == 8, unsafe_loading(bad)
    assert unsafe_loading("import torch\ntorch.load('a.pt', weights_only=True)\nnp.load('x.npz')\n") == []


def test_no_code_path_can_unpickle_weights_or_run_remote_code():
    assert len(SCANNED) > 30, "the scan must cover the project's code"
    problems = {str(p.relative_to(REPO)): found for p in SCANNED if (found := unsafe_loading(p.read_text("utf-8")))}
    assert problems == {}
    texts = {p: p.read_text("utf-8") for p in SCANNED}
    assert not [p for p, t in texts.items() if re.search(r"trust_remote_code\s*[=:]\s*True", t)]


def _only_pickle(folder: Path, model) -> Path:
    """`model`'s checkpoint with its weights only as pytorch_model.bin (what an old or hostile repo holds)."""
    import torch

    model.config.architectures = [type(model).__name__]  # as save_pretrained records it
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_a_folder_with_only_pytorch_model_bin_is_refused(tmp_path, tiny_llama_dir):
    import shutil

    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    from rlhflab.models.loading import load_causal_lm, load_policy, load_reward_model

    policy = _only_pickle(tmp_path / "policy", LlamaForCausalLM.from_pretrained(tiny_llama_dir))
    reward = _only_pickle(tmp_path / "reward",
                          AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1))
    for folder in (policy, reward):  # the tokenizer and generation config, everything but the weights
        for file in tiny_llama_dir.iterdir():
            if file.is_file() and file.suffix != ".safetensors" and file.name != "config.json":
                shutil.copy(file, folder / file.name)
    sentence = r"pytorch_model\.bin \(pickle\), which this project never loads.*safetensors"
    with pytest.raises(UserError, match=sentence):
        load_causal_lm(str(policy))
    with pytest.raises(UserError, match=sentence):
        load_policy(str(policy))
    with pytest.raises(UserError, match=sentence):
        load_reward_model(str(reward))


def test_a_lora_adapter_with_only_adapter_model_bin_is_refused(tmp_path, tiny_llama_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from rlhflab.models.loading import load_policy
    from rlhflab.models.policies import PolicySet

    adapter = tmp_path / "lora"
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(adapter)
    weights = adapter / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), adapter / "adapter_model.bin")
    weights.unlink()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny_llama_dir)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"adapter_model\.bin \(pickle\), which this project never loads"):
        load_policy(str(adapter))
    with pytest.raises(UserError, match=r"adapter_model\.bin \(pickle\)"):
        PolicySet(str(tiny_llama_dir), {"lora": str(adapter)}).load("lora")


# ---------------------------------------------------------------- (2) the Hub token is never printed or written


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """A Hub stand-in on 127.0.0.1 that refuses every request (401) and remembers the Authorization headers."""

    seen: list[str] = []

    def _refuse(self):
        _FakeHub.seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args):
        pass


def test_hub_token_is_never_printed_or_written(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "dcgan"
    (tmp_path / "data").mkdir()
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "training" / "dcgan.py"), "--data-root", str(tmp_path / "data"),
             "--no-download", "--allow-phantom", "--epochs", "1", "--batch-size", "64", "--max-train-images", "128",
             "--generator-width", "8", "--discriminator-width", "8", "--diagnostic-samples", "0",
             "--num-threads", "1", "--output-dir", str(out), "--push-to-hub", "user/repo"],
            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        server.shutdown()
    assert f"Bearer {FAKE_TOKEN}" in _FakeHub.seen, "the push really used the token (and reached only 127.0.0.1)"
    assert proc.returncode == 2 and "push to user/repo failed" in proc.stderr and "intact" in proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    secrets = (FAKE_TOKEN, FAKE_TOKEN[3:], "FAKEtoken1234")
    for stream in (proc.stdout, proc.stderr):
        assert not any(s in stream for s in secrets)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "hf-home" not in p.parts]
    assert len(files) >= 5
    leaked = [str(p) for p in files if any(s.encode() in p.read_bytes() for s in secrets)]
    assert leaked == []


# ---------------------------------------------------------------- (3) parameterised rating SQL


def test_rating_sql_is_fixed_text_with_parameters():
    path = REPO / "rlhflab" / "store" / "ratings.py"
    tree = ast.parse(path.read_text("utf-8"))
    constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
    import rlhflab.store.ratings as ratings_module

    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("execute", "executemany", "executescript")]
    assert len(calls) >= 8
    for call in calls:
        sql = call.args[0]
        assert isinstance(sql, ast.Name) and sql.id in constants, \
            f"line {call.lineno}: SQL must be a module constant, not built where values are at hand"
        text = getattr(ratings_module, sql.id)
        assert isinstance(text, str) and "'" not in text and '"' not in text, f"{sql.id} holds an inline literal"
        if "?" in text:
            assert len(call.args) == 2, f"line {call.lineno}: {sql.id} has placeholders but no parameters"
        # an f-string constant may only splice the fixed column names of CRITERIA
        for node in ast.walk(constants[sql.id]):
            if isinstance(node, ast.FormattedValue):
                names = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                assert names <= {"CRITERIA", "c", "len"}, f"{sql.id} splices {names}"
            assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)), f"{sql.id} uses %"
            assert not (isinstance(node, ast.Attribute) and node.attr == "format"), f"{sql.id} uses .format"


def test_injection_text_is_stored_verbatim_and_tables_survive(tmp_path):
    db = tmp_path / "ratings.sqlite"
    store = RatingsStore(db)
    store.replace_items([{"prompt_index": 0, "prompt": INJECTION, "policy": "base", "response": INJECTION + " \x00"},
                         {"prompt_index": 0, "prompt": INJECTION, "policy": "full", "response": "plain"}])
    item = next(i for i in store.items() if i["policy"] == "base")
    scores = dict(zip(CRITERIA, [5, 4, 3, 2, 1]))
    store.add_rating(item["item_id"], scores, rater=INJECTION)
    for forged in (INJECTION, "' OR '1'='1", f"{item['item_id']}' --"):
        with pytest.raises(UserError, match="unknown rating item"):
            store.add_rating(forged, scores, rater=INJECTION)
    task = store.blind_task(INJECTION)
    assert task["prompt"] == INJECTION and len(task["responses"]) == 2 and task["rated_before"]
    store.replace_items([{"prompt_index": 1, "prompt": "next", "policy": "lora", "response": "r"}])
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"items", "ratings"} <= tables
    [row] = store.ratings()
    assert row["rater"] == INJECTION and row["prompt"] == INJECTION and row["response"] == INJECTION + " \x00"
    assert [row[c] for c in CRITERIA] == [5, 4, 3, 2, 1]
    assert {i["policy"] for i in store.items()} == {"base", "lora"}, "the rated item is kept, the unrated replaced"


def test_a_partly_bad_submission_stores_nothing(tmp_path):
    store = RatingsStore(tmp_path / "ratings.sqlite")
    store.replace_items([{"prompt_index": 0, "prompt": "p", "policy": "base", "response": "r"}])
    good = store.items()[0]["item_id"]
    scores = dict(zip(CRITERIA, [3] * 5))
    with pytest.raises(UserError, match="unknown rating item"):
        store.add_ratings([(good, scores), ("forged", scores)], "x")
    with pytest.raises(UserError, match="harmlessness"):
        store.add_ratings([(good, scores), (good, {**scores, "harmlessness": True})], "x")
    assert store.ratings() == []


# ---------------------------------------------------------------- (4) blind ratings and the page


NEUTRAL = {"base": "Bananas are yellow.", "full": "An apple a day.", "lora": "Grapes grow in bunches."}


@pytest.fixture(scope="module")
def rating_app(tmp_path_factory, tiny_llama_dir):
    root = write_tiny_checkpoints(tmp_path_factory.mktemp("security"), tiny_llama_dir, kinds=("eval",))
    RatingsStore(root / "eval" / "ratings.sqlite").replace_items(  # texts that do not name their policy
        [{"prompt_index": 0, "prompt": "Name a fruit.", "policy": p, "response": r} for p, r in NEUTRAL.items()])
    env = {"RLHFLAB_CHECKPOINTS": str(root), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1",
           "RLHFLAB_RATINGS_REPO": "someone/ratings", "HF_TOKEN": FAKE_TOKEN}
    with running_app(env, rating_scheduler_cls=FakeScheduler) as (registry, url):
        yield registry, url


def test_blind_task_output_carries_no_policy_and_no_item_id(rating_app):
    registry, url = rating_app
    items = registry.ratings_store().items()
    assert all(re.fullmatch(r"[0-9a-f]{12}", i["item_id"]) for i in items), "item ids are opaque"
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("gradio_api/call/next_item", json={"data": []})
        raw = http.get(f"gradio_api/call/next_item/{r.json()['event_id']}").text
    assert "event: complete" in raw and all(text in raw for text in NEUTRAL.values()), "the task was shown"
    assert not any(i["item_id"] in raw for i in items), "the item ids stay in the server-side session"
    data = json.dumps(json.loads(raw.split("event: complete\ndata:", 1)[1].strip()), ensure_ascii=False)
    assert not re.search(r"\b(base|full|lora|policy)\b", data, re.IGNORECASE), data
    # the three responses are labelled A, B, C only
    assert re.findall(r"\*\*Response ([A-Z])\*\*", data) == ["A", "B", "C"]


def test_page_and_config_reveal_neither_mapping_nor_token(rating_app):
    registry, url = rating_app
    c = make_client(url)
    task = c.predict(api_name="/next_item")
    assert any(text in t for t in task[1:4] for text in NEUTRAL.values())
    items = registry.ratings_store().items()
    with httpx.Client(base_url=url, timeout=60) as http:
        pages = {path: http.get(path).text for path in ("", "config", "gradio_api/info")}
    for path, text in pages.items():
        assert len(text) > 500, path
        assert FAKE_TOKEN not in text and FAKE_TOKEN[3:] not in text, f"/{path} shows the Hub token"
        assert not any(i["item_id"] in text for i in items), f"/{path} shows an item id"
        assert not any(r in text for r in NEUTRAL.values()), f"/{path} shows a response outside the session"
        for response in NEUTRAL.values():  # no response sits next to a policy name
            assert not re.search(re.escape(response) + r".{0,200}\b(base|full|lora)\b", text, re.S), path


def test_the_rater_is_the_session_and_a_typed_name_cannot_be_injected(rating_app):
    """The rater is no longer typed in: it is the browser session (or the signed-in user on a Space), so a name
    with SQL in it cannot reach the store, and each session rates a response once."""
    registry, url = rating_app
    store = registry.ratings_store()
    before = len(store.ratings())
    c = make_client(url)
    c.predict(api_name="/next_item")
    out = c.predict(*([4] * 5 + [None] * 10), api_name="/rate")
    assert "Saved 1 rating(s)" in out[-1]
    rows = store.ratings()
    assert len(rows) == before + 1 and rows[-1]["rater"].startswith("session:")
    assert not any(r["rater"] == INJECTION for r in rows[before:])
    with sqlite3.connect(store.path) as con:
        assert {"items", "ratings"} <= {r[0] for r in con.execute("SELECT name FROM sqlite_master")}


# ---------------------------------------------------------------- (5) loopback by default


def test_app_listens_on_loopback_unless_told_otherwise(tmp_path, monkeypatch):
    import app
    from space.registry import Registry

    registry = Registry(env={"RLHFLAB_CHECKPOINTS": str(tmp_path)})
    for env in ({}, {"GRADIO_SERVER_NAME": ""}, {"GRADIO_SERVER_NAME": "  "}):
        options = app.launch_options(registry, env)
        assert options["server_name"] == "127.0.0.1" and options["share"] is False, env
    assert app.launch_options(registry, {"GRADIO_SERVER_NAME": "0.0.0.0"})["server_name"] == "0.0.0.0"

    launched = {}

    class FakeDemo:
        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("RLHFLAB_PRELOAD", raising=False)
    monkeypatch.setenv("RLHFLAB_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(app, "build_demo", lambda registry: FakeDemo())
    app.main()
    assert launched["server_name"] == "127.0.0.1" and launched.get("share") is False
