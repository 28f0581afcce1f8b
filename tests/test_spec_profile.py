"""The spec profile trains the specification's base model (gpt2-medium, plain prompts), the demo profile the embedded
SmolLM2; offline, a spec run without --base-model stops with one sentence naming both ways out."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from rlhflab.config import (
    DEMO_BASE_MODEL,
    SPEC_BASE_MODEL,
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    build_config,
)


@pytest.mark.parametrize("cls", [RewardConfig, SFTConfig, DPOConfig, PPOConfig, GRPOConfig, EvalConfig])
def test_spec_trains_gpt2_medium_and_demo_the_embedded_model(cls):
    assert SPEC_BASE_MODEL == "openai-community/gpt2-medium"
    assert build_config(cls, "spec").base_model == SPEC_BASE_MODEL
    assert build_config(cls, "demo").base_model == DEMO_BASE_MODEL == "smollm2-135m-instruct"


def test_offline_spec_without_base_model_stops_with_one_sentence(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
           "RLHFLAB_CHECKPOINTS": str(tmp_path / "store"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "training" / "sft.py"), "--profile", "spec"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(".") and ". " not in lines[0]
    assert SPEC_BASE_MODEL in lines[0] and "--base-model smollm2-135m-instruct" in lines[0]
    assert "--profile demo" in lines[0]
    assert not (tmp_path / "store").exists()  # stopped before anything was written


def test_the_check_passes_where_the_model_can_load(monkeypatch):
    from rlhflab import cli
    from rlhflab.store import hub

    monkeypatch.setattr(hub, "hub_model_available", lambda repo: True)
    cli.require_base_model(build_config(SFTConfig, "spec"))  # cached or reachable: no error
    monkeypatch.setattr(hub, "hub_model_available", lambda repo: pytest.fail("checked only for the spec default"))
    cli.require_base_model(build_config(SFTConfig, "demo"))
    cli.require_base_model(build_config(SFTConfig, "spec", base_model=DEMO_BASE_MODEL))


ARGV_SCRIPT = '''
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
(out / "done.json").write_text(json.dumps(sys.argv[1:]))
'''


@pytest.mark.parametrize("reachable", [False, True])
def test_a_spec_run_on_stand_in_data_offline_trains_the_embedded_model(tmp_path, monkeypatch, reachable):
    from rlhflab import pipeline
    from rlhflab.store import hub

    monkeypatch.setattr(hub, "hub_model_available", lambda repo: reachable)
    script = tmp_path / "step.py"
    script.write_text(ARGV_SCRIPT)
    steps = [pipeline.Step(name, str(script), ["--out", str(tmp_path / "store" / name)], name, "done.json",
                           takes_base_model=name != "dcgan") for name in ("sft", "dcgan")]
    assert pipeline.run_pipeline("spec", tmp_path / "store", jobs=1, steps=steps, cores=1, stand_in_data=True)
    argv = {name: json.loads((tmp_path / "store" / name / "done.json").read_text()) for name in ("sft", "dcgan")}
    assert ("--base-model" in argv["sft"]) == (not reachable) and "--base-model" not in argv["dcgan"]
    if not reachable:
        assert argv["sft"][argv["sft"].index("--base-model") + 1] == DEMO_BASE_MODEL
