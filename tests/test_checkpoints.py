"""Checkpoint store: atomic saves, model cards, offline Hub loading, pushes (recorded and failing)."""

import pytest
from huggingface_hub import HfApi

from rlhflab.errors import UserError
from rlhflab.store import cards, checkpoints, hub


def test_save_round_trip_and_card(tmp_path):
    out = tmp_path / "ckpt"

    def write(folder):
        (folder / "weights.txt").write_text("v1")
        cards.write_model_card(folder, {"base_model": "x/y", "datasets": ["a/b"], "tags": ["t"]},
                                     "Title", {"Metrics": "acc 0.7"})

    checkpoints.save_atomically(out, write)
    assert (out / "weights.txt").read_text() == "v1"
    card = cards.read_model_card(out)
    assert card.startswith("---\nbase_model: x/y\ndatasets:\n- a/b\ntags:\n- t\n---\n")
    assert "## Metrics\n\nacc 0.7" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    out = tmp_path / "ckpt"
    checkpoints.save_atomically(out, lambda f: (f / "weights.txt").write_text("old"))

    def crash(folder):
        (folder / "weights.txt").write_text("half-written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_atomically(out, crash)
    assert (out / "weights.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_hub_id_loads_offline_from_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-reward" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (cache / "models--someone--tiny-reward" / "refs").mkdir()
    (cache / "models--someone--tiny-reward" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    path = checkpoints.resolve_checkpoint("someone/tiny-reward")
    assert path == snap
    with pytest.raises(UserError, match="could not be fetched"):
        checkpoints.resolve_checkpoint("someone/not-cached")


def test_missing_local_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="neither a local folder nor a Hub repo id"):
        checkpoints.resolve_checkpoint(str(tmp_path / "nothing" / "here"))
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        checkpoints.resolve_checkpoint(str(tmp_path / "half"), required_file="config.json")


class RecordingApi(HfApi):
    """The real client with its two network calls recorded instead of sent."""

    def __init__(self):
        super().__init__(token="hf_test_token_never_printed")
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw.get("repo_type"), kw.get("exist_ok")))

    def upload_folder(self, folder_path, repo_id, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in __import__("pathlib").Path(folder_path).rglob("*")
                       if p.is_file())
        self.calls.append(("upload_folder", repo_id, files, kw.get("ignore_patterns")))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()


def test_push_sends_the_folder_to_the_named_repo(tmp_path):
    folder = tmp_path / "reward"
    folder.mkdir()
    (folder / "model.safetensors").write_text("w")
    (folder / "README.md").write_text("card")
    api = RecordingApi()
    result = hub.push_folder(folder, "me/reward", api=api)
    assert result.ok and result.url.endswith("/commit/1")
    assert api.calls[0] == ("create_repo", "me/reward", "model", True)
    assert api.calls[1][:3] == ("upload_folder", "me/reward", ["README.md", "model.safetensors"])
    assert "hf_test_token" not in result.message


def test_failed_push_keeps_local_checkpoint_and_says_what_failed(tmp_path, monkeypatch):
    folder = tmp_path / "reward"
    folder.mkdir()
    (folder / "model.safetensors").write_text("w")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # A real client pointed at a closed local port: the request fails like a network outage.
    api = HfApi(endpoint="http://127.0.0.1:9", token="hf_secret_value")
    result = hub.push_folder(folder, "me/reward", api=api)
    assert not result.ok
    assert "failed while creating the repo" in result.message and "intact" in result.message
    assert "hf_secret_value" not in result.message
    assert (folder / "model.safetensors").read_text() == "w"
