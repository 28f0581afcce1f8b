"""The pipeline's scheduler on stand-in steps (tiny scripts): dependencies first, independent steps side by
side with the CPU threads split, finished steps reused, a failure keeps what finished and names the command."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from rlhflab import pipeline

STEP_SCRIPT = '''
import argparse, json, os, sys, time
from pathlib import Path
p = argparse.ArgumentParser(); p.add_argument("--profile"); p.add_argument("--out"); p.add_argument("--sleep", type=float)
p.add_argument("--fail", action="store_true"); a = p.parse_args()
start = time.time(); time.sleep(a.sleep)
if a.fail:
    print("simulated failure: out of cheese"); sys.exit(3)
Path(a.out).mkdir(parents=True, exist_ok=True)
share = Path(os.environ["RLHFLAB_THREADS_FILE"]).read_text()  # what follow_thread_share would adopt now
(Path(a.out) / "done.json").write_text(json.dumps({"start": start, "end": time.time(), "threads": os.environ["OMP_NUM_THREADS"],
                                                   "share_at_end": share, "sleep": a.sleep}))
'''


def _steps(tmp: Path, fail: str | None = None) -> list[pipeline.Step]:
    script = tmp / "step.py"
    script.write_text(STEP_SCRIPT)

    def step(name, sleep, after=()):
        args = ["--out", str(tmp / "store" / name), "--sleep", str(sleep)] + (["--fail"] if name == fail else [])
        return pipeline.Step(name, str(script), args, name, "done.json", None, list(after))

    return [step("reward", 0.3), step("ppo-full", 1.5, ["reward"]), step("ppo-lora", 1.5, ["reward"]),
            step("eval", 0.2, ["reward", "ppo-full", "ppo-lora"])]


def _record(tmp: Path, name: str) -> dict:
    return json.loads((tmp / "store" / name / "done.json").read_text())


def test_dependencies_first_and_independent_steps_side_by_side(tmp_path):
    ok = pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=_steps(tmp_path), cores=2)
    assert ok
    reward, full, lora, ev = (_record(tmp_path, n) for n in ("reward", "ppo-full", "ppo-lora", "eval"))
    assert full["start"] >= reward["end"] and lora["start"] >= reward["end"]
    assert ev["start"] >= max(full["end"], lora["end"])
    assert full["start"] < lora["end"] and lora["start"] < full["end"], "the two PPO steps should overlap"
    # alone a step gets both cores; side by side one each
    assert (reward["threads"], full["threads"], lora["threads"], ev["threads"]) == ("2", "1", "1", "2")


def test_one_job_runs_steps_one_after_another(tmp_path):
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=1, steps=_steps(tmp_path), cores=2)
    full, lora = _record(tmp_path, "ppo-full"), _record(tmp_path, "ppo-lora")
    assert lora["start"] >= full["end"] and full["threads"] == lora["threads"] == "2"


def test_finished_steps_are_reused(tmp_path, capsys):
    steps = _steps(tmp_path)
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=steps, cores=2)
    before = {n: _record(tmp_path, n) for n in ("reward", "ppo-full", "ppo-lora", "eval")}
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=steps, cores=2)
    assert {n: _record(tmp_path, n) for n in before} == before
    assert capsys.readouterr().out.count("reusing") == 4


def test_failed_step_keeps_the_others_and_names_the_command(tmp_path, capsys):
    ok = pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=_steps(tmp_path, fail="ppo-lora"), cores=2)
    assert not ok
    err = capsys.readouterr().err
    assert "step 'ppo-lora' failed" in err and "exit 3" in err and "out of cheese" in err
    assert "re-run:" in err and "--fail" in err
    # the step that ran beside it finished and is kept; the step after it never started
    assert (tmp_path / "store" / "reward" / "done.json").is_file()
    assert (tmp_path / "store" / "ppo-full" / "done.json").is_file()
    assert not (tmp_path / "store" / "eval").exists()
    # a second run reuses what finished and only re-runs what failed or never ran
    fixed = _steps(tmp_path)
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=fixed, cores=2)
    assert "reusing" in capsys.readouterr().out


def test_default_jobs_is_one_with_a_gpu(monkeypatch):
    monkeypatch.setattr(pipeline.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert pipeline.default_jobs() == 1


def test_a_step_that_outlives_its_neighbour_gets_the_freed_core(tmp_path):
    steps = _steps(tmp_path)
    short, long_ = steps[1], steps[2]
    short.args[short.args.index("--sleep") + 1] = "0.2"
    long_.args[long_.args.index("--sleep") + 1] = "3"
    short.after = long_.after = []
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=[short, long_], cores=2)
    s, l = _record(tmp_path, short.output), _record(tmp_path, long_.output)
    assert s["threads"] == l["threads"] == "1" and l["start"] < s["end"]  # started side by side
    assert l["share_at_end"] == "2"  # the pipeline handed it the second core when the short one ended


def test_a_core_freed_while_the_rest_waits_for_a_running_step_goes_to_that_step(tmp_path):
    """The evaluation waits for both PPO runs: when the short one ends, nothing can start, so the long one takes the
    freed core (not left idle until it ends); the evaluation then starts with both."""
    steps = _steps(tmp_path)
    full, lora = steps[1], steps[2]
    full.args[full.args.index("--sleep") + 1] = "0.2"
    lora.args[lora.args.index("--sleep") + 1] = "3"
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=steps, cores=2)
    f, l, ev = (_record(tmp_path, n) for n in ("ppo-full", "ppo-lora", "eval"))
    assert f["threads"] == l["threads"] == "1" and l["start"] < f["end"]
    assert l["share_at_end"] == "2" and ev["threads"] == "2"


def test_follow_thread_share_adopts_the_pipelines_share(tmp_path, monkeypatch):
    import torch

    from rlhflab.models.hardware import follow_thread_share

    before = torch.get_num_threads()
    monkeypatch.delenv("RLHFLAB_THREADS_FILE", raising=False)
    assert follow_thread_share() == before  # outside the pipeline: nothing changes
    share = tmp_path / "step.threads"
    monkeypatch.setenv("RLHFLAB_THREADS_FILE", str(share))
    try:
        share.write_text("1")
        assert follow_thread_share() == 1 == torch.get_num_threads()
        share.write_text("not a number")
        assert follow_thread_share() == 1  # a torn or odd file changes nothing
    finally:
        torch.set_num_threads(before)


def test_stand_in_data_points_each_training_step_at_the_embedded_data(tmp_path):
    from rlhflab.config import DCGANConfig, DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig, parse_config

    classes = {"reward": RewardConfig, "judge": RewardConfig, "ppo-full": PPOConfig, "ppo-lora": PPOConfig,
               "dcgan": DCGANConfig, "sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}
    assert {s.output for s in pipeline.STEPS} == {*classes, "eval"}
    for step in pipeline.STEPS:
        if step.output not in classes:
            assert step.stand_in == []  # the evaluation reads what the RL runs saved
            continue
        cmd = step.command("spec", step.stand_in)
        cfg = parse_config(classes[step.output], cmd[2:])  # the step's own parser accepts the flags
        assert cfg.profile == "spec"
        if step.output in ("reward", "judge"):  # one test part for both: the same test size
            assert Path(cfg.dataset).is_file() and cfg.test_size == 64 and cfg.dev_size == 20
            assert cfg.role == step.output and Path(cfg.output_dir).name == step.output
            assert cfg.train_size == (1000 if step.output == "reward" else 1500)
        elif step.output == "dcgan":
            assert cfg.allow_phantom and not cfg.download and cfg.epochs == 1000
        elif step.output in ("sft", "dpo"):
            assert Path(cfg.dataset).is_file() and cfg.batch_size == 2 and cfg.lr == 1e-5
        elif step.output == "grpo":
            assert Path(cfg.dataset).is_file() and cfg.lang == "en" and cfg.num_generations == 4
        else:
            assert Path(cfg.dataset).is_file() and cfg.lang == "en" and cfg.batch_size == 64


def test_status_file_says_what_runs_and_what_waits(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx2 avx512f avx512_bf16")  # the profile's own kind of host
    import json

    steps = _steps(tmp_path)
    for s in steps:
        s.demo_s = 42
    assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=steps, cores=2)
    status = json.loads((tmp_path / "store" / "logs" / pipeline.STATUS_FILE).read_text())
    assert status["done"] and status["running"] == [] and status["pending"] == []
    assert sorted(status["finished"]) == sorted(s.output for s in steps) and status["failed"] == []
    running = [pipeline._Running(steps[0], None, [], tmp_path, 0.0, 1)]
    pipeline.write_status(tmp_path / "s.json", "demo", running, steps[1:], [], [], 0.0)
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["running"][0]["name"] == steps[0].name and status["running"][0]["expected_s"] == 42
    assert [p["name"] for p in status["pending"]] == [s.name for s in steps[1:]] and not status["done"]


def test_remaining_time_follows_the_schedule_not_the_sum_over_jobs():
    """The evaluation waits for every policy: with two slots the rest of the demo is the longest chain through the
    schedule (350 s here), not the running step plus the pending seconds halved (10 + 450 / 2 = 235 s)."""
    pending = [("ppo", ["reward"], 100.0), ("grpo", ["reward"], 100.0), ("dpo", [], 50.0),
               ("eval", ["ppo", "grpo", "dpo"], 200.0)]
    # t=0 reward (10 s left) and dpo run; t=10 ppo starts; t=50 grpo starts; t=150 eval starts, ends at 350
    assert pipeline.simulated_remaining_s([("reward", 10.0)], pending, jobs=2) == 350.0
    assert pipeline.simulated_remaining_s([("reward", 10.0)], pending, jobs=1) == 460.0  # one at a time: the sum
    assert pipeline.simulated_remaining_s([("reward", 10.0)], pending, jobs=4) == 310.0  # 10 + 100 + 200
    # a dependency outside the run (reused, or --only) is met; an unknown time gives no estimate
    assert pipeline.simulated_remaining_s([], [("ppo", ["reward"], 100.0)], jobs=2) == 100.0
    assert pipeline.simulated_remaining_s([("reward", None)], pending, jobs=2) is None
    assert pipeline.simulated_remaining_s([], [], jobs=2) == 0.0


def test_the_longest_chain_to_the_end_gets_a_free_core_first():
    """GRPO (the longest RL step) starts right after the reward model it needs, before the shorter PPO runs and the
    judge, on either host kind's times; without times the STEPS order holds. The demo's simulated total falls."""
    def order(fp32, profile="demo"):
        return [s.output for s in pipeline.critical_path_first(list(pipeline.STEPS),
                                                                 lambda s: s.expected_s(profile, fp32))]

    def total(steps, fp32):
        return pipeline.simulated_remaining_s([], [(s.output, s.after, s.expected_s("demo", fp32)) for s in steps], 2)

    for fp32 in (False, True):
        assert order(fp32)[:4] == ["reward", "grpo", "ppo-full", "ppo-lora"]
        ranked = pipeline.critical_path_first(list(pipeline.STEPS), lambda s: s.expected_s("demo", fp32))
        assert total(ranked, fp32) < 0.95 * total(pipeline.STEPS, fp32)
    assert order(True, profile="spec") == [s.output for s in pipeline.STEPS]
    # a step always comes before the steps that wait for it
    ranked = order(False)
    assert all(ranked.index(d) < ranked.index(s.output) for s in pipeline.STEPS for d in s.after)


def test_the_status_file_carries_the_simulated_remaining_time(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx2 avx512f avx512_bf16")  # the profile's own kind of host
    import json

    steps = _steps(tmp_path)
    for s in steps:
        s.demo_s = 100
    steps[-1].after = [s.output for s in steps[:-1]]
    running = [pipeline._Running(steps[0], None, [], tmp_path, 0.0, 1, wall_start=time.time())]
    pipeline.write_status(tmp_path / "s.json", "demo", running, steps[1:], [], [], 0.0, jobs=2)
    status = json.loads((tmp_path / "s.json").read_text())
    # steps[0] has ~100 s left; steps[1] and steps[2] share the slots; the last waits for all: ~300 s
    assert abs(status["remaining_total_s"] - 300) < 2 and status["jobs"] == 2


def test_stand_in_flags_reach_the_step_only_when_asked(tmp_path):
    for asked in (False, True):
        steps = _steps(tmp_path)
        for s in steps:
            s.stand_in = ["--sleep", "0"]  # the stand-in script's own flag; argparse keeps the last value
        assert pipeline.run_pipeline("demo", tmp_path / "store", jobs=2, steps=steps, cores=2, stand_in_data=asked)
        sleeps = [_record(tmp_path, s.output)["sleep"] for s in steps]
        assert sleeps == ([0, 0, 0, 0] if asked else [0.3, 1.5, 1.5, 0.2])
        shutil.rmtree(tmp_path / "store")


def test_an_unreachable_dataset_suggests_the_stand_in_data(tmp_path, capsys):
    from rlhflab.errors import DATASET_UNAVAILABLE_EXIT

    script = tmp_path / "offline.py"
    script.write_text(f"import sys; print('error: the dataset could not be reached'); sys.exit({DATASET_UNAVAILABLE_EXIT})")
    step = pipeline.Step("reward model", str(script), [], "reward", "done.json", None)
    assert not pipeline.run_pipeline("spec", tmp_path / "store", jobs=1, steps=[step], cores=1)
    assert "--profile spec --stand-in-data" in capsys.readouterr().err
    script.write_text("import sys; sys.exit(2)")  # any other failure: no such hint
    assert not pipeline.run_pipeline("spec", tmp_path / "store", jobs=1, steps=[step], cores=1)
    assert "--stand-in-data" not in capsys.readouterr().err


def test_the_judge_is_built_beside_the_reward_model_and_before_the_evaluation():
    from rlhflab.config import RewardConfig, parse_config

    names = [s.output for s in pipeline.STEPS]
    assert names.index("judge") == names.index("reward") + 1
    judge = pipeline.STEPS[names.index("judge")]
    assert judge.after == [] and judge.demo_s and judge.hub_suffix == "judge"
    assert "judge" in pipeline.STEPS[names.index("eval")].after
    for profile in ("demo", "spec"):
        cfg = parse_config(RewardConfig, judge.command(profile, [])[2:])
        reward = parse_config(RewardConfig, pipeline.STEPS[names.index("reward")].command(profile, [])[2:])
        assert cfg.role == "judge" and Path(cfg.output_dir).name == "judge" and cfg.seed != reward.seed
        assert (cfg.dataset, cfg.test_size, cfg.judge_share) == (reward.dataset, reward.test_size, reward.judge_share)


def test_a_cpu_without_native_bf16_is_compared_with_the_fp32_hosts_times(tmp_path, monkeypatch):
    """Before any step ends, an AVX2 laptop is promised the times of the profile's fp32 host (run 11), a bf16 CPU
    those of the bf16 host (run 10): the first promise is the host kind's, and the measured speed refines it."""
    import json

    steps = _steps(tmp_path)
    for s in steps:
        s.demo_s, s.demo_s_fp32 = 100, 300
    for flags, expected in (("sse4_2 avx avx2 fma", 300), ("avx2 avx512f avx512_bf16", 100)):
        monkeypatch.setenv("RLHFLAB_CPU_FLAGS", flags)
        pipeline.write_status(tmp_path / "s.json", "demo", [], steps, [], [], 0.0, jobs=2)
        status = json.loads((tmp_path / "s.json").read_text())
        assert status["speed_factor"] == 1.0 and [p["expected_s"] for p in status["pending"]] == [expected] * 4
        assert status["remaining_total_s"] == 3 * expected  # reward, then both PPOs side by side, then eval
    assert pipeline.STEPS[0].expected_s("spec", True) is None  # only the demo profile has expected times
    assert all(s.demo_s and s.demo_s_fp32 for s in pipeline.STEPS)


def test_remaining_time_follows_the_hosts_measured_speed(tmp_path, monkeypatch):
    """A host that ran the finished steps 3x as long as the profile says (an AVX2 laptop in fp32) gets 3x the
    profile's time for what waits and for a running step (its own progress bar only once it runs past that; a bar
    never sets the host's speed, a step past its expected time does), and the status says the host is slower than
    the profile."""
    monkeypatch.setenv("RLHFLAB_CPU_FLAGS", "avx2 avx512f avx512_bf16")  # the profile's own kind of host
    import json
    import time

    assert pipeline.host_speed_factor([]) == 1.0
    assert pipeline.host_speed_factor([(300, 100), (330, 100), (90, 30)]) == 3.0
    assert pipeline.progress_fraction("loading\r 40%|####  | 4/10 [00:08<00:12, 2.0s/it]") == 0.4
    assert pipeline.progress_fraction("done 10/10 [00:20<00:00]") is None  # a finished bar says nothing of what follows
    assert pipeline.progress_fraction("no bar here") is None
    steps = _steps(tmp_path)
    for s in steps:
        s.demo_s = 100
    log = tmp_path / "running.log"
    log.write_text(" 25%|##  | 5/20 [01:00<03:00, 12.0s/it]")
    running = [pipeline._Running(steps[0], None, [], log, 0.0, 1, wall_start=time.time() - 60)]
    pipeline.write_status(tmp_path / "s.json", "demo", running, steps[1:], [], [], 0.0,
                          observed=[(300.0, 100.0), (290.0, 100.0)])
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["slower_than_profile"] and 2.5 < status["speed_factor"] <= 3.0
    # factor: median of the finished steps' 3.0 and 2.9 = 2.95; the running step's bar (60 s for a quarter, 2.4x)
    # is no measure of the step and does not count: 295 s, 60 s gone
    assert abs(status["speed_factor"] - 2.95) < 0.01 and abs(status["running"][0]["remaining_s"] - 235) < 2
    log.write_text(" 80%|##  | 16/20 [06:40<01:40, 25.0s/it]")  # past its 290 s: its own bar says 100 s to go
    running[0].wall_start = time.time() - 400
    pipeline.write_status(tmp_path / "s.json", "demo", running, steps[1:], [], [], 0.0,
                          observed=[(300.0, 100.0), (290.0, 100.0)])
    status = json.loads((tmp_path / "s.json").read_text())
    assert abs(status["running"][0]["remaining_s"] - 100) < 5
    assert abs(status["speed_factor"] - 3.0) < 0.01  # a step past its time counts, at least 4x: median(3.0, 2.9, 4.0)
    log.write_text("scoring the answers")  # past its time with no bar: no estimate rather than "0 s left"
    pipeline.write_status(tmp_path / "s.json", "demo", running, [], [], [], 0.0,
                          observed=[(300.0, 100.0), (290.0, 100.0)])
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["running"][0]["remaining_s"] is None and status["remaining_total_s"] is None
    assert all(abs(p["expected_s"] - 100 * status["speed_factor"]) < 1e-6 for p in status["pending"])
    pipeline.write_status(tmp_path / "s.json", "demo", [], steps[1:], [], [], 0.0, observed=[(95.0, 100.0)])
    assert not json.loads((tmp_path / "s.json").read_text())["slower_than_profile"]
