"""bench/run_all.py writes BENCHMARKS.md's table from bench/results.json: every figure with its baseline,
ratio, command, machine and date; the prose around the markers is left as it was."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from report import END, START, render_table, write_benchmarks_md

WHERE = {"command": "python bench/run_all.py --only x", "machine": "Test CPU, 2 cores", "measured": "2026-11-22T10:00+00:00"}
RESULTS = {
    "generation": {**WHERE, "decode_batch1": {
        "baseline_tok_s": 14.0, "ours_fp32_tok_s": 21.0, "ours_bf16_tok_s": 20.0, "ours_int8_dynamic_tok_s": 28.0,
        "speedup_fp32": 1.5, "fraction_of_limit_fp32": 0.7, "bandwidth_limit_fp32_tok_s": 30.0,
        "bandwidth_gb_s": 16.1, "weights_mb_fp32": 538.0},
        "eval_batched_vs_loop": {"prompts": 16, "new_tokens": 32, "loop_s": 30.0, "batched_s": 6.0, "speedup": 5.0,
                                 "identical_outputs": 16}},
    "ppo": {**WHERE, "benchmark": "PPO step", "baseline": "plain TRL", "baseline_s_per_step": 20.0, "ours": "ours",
            "ours_s_per_step": 8.0, "speedup": 2.5},
    "dcgan": {"error": "RuntimeError: boom"},
}


def test_table_has_each_figure_with_its_ratio_goal_and_where_it_was_measured():
    table = render_table(RESULTS).splitlines()
    decode = next(line for line in table if line.startswith("| chat decode"))
    assert "**1.50×**" in decode and "**not met**" in decode  # 1.5× < 2× although 70 % ≥ 60 %
    assert "70 % of the bandwidth limit" in decode and "Test CPU, 2 cores" in decode and "2026-11-22 10:00" in decode
    ppo = next(line for line in table if line.startswith("| PPO step"))
    assert "20.0" in ppo and "8.0" in ppo and "**2.50×**" in ppo and "2×: met" in ppo
    assert any(line.startswith("| evaluation generation") and "**5.00×**" in line for line in table)
    assert any("failed: RuntimeError: boom" in line for line in table)  # a failed bench is shown, not dropped


def test_only_the_text_between_the_markers_is_rewritten(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nprose before\n\n{START}\nold table\n{END}\n\nprose after\n", encoding="utf-8")
    assert write_benchmarks_md(RESULTS, md)
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nprose before\n\n") and text.endswith(f"{END}\n\nprose after\n")
    assert "old table" not in text and "| PPO step" in text
    assert write_benchmarks_md(RESULTS, md) and md.read_text(encoding="utf-8") == text  # idempotent
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not write_benchmarks_md(RESULTS, plain) and plain.read_text() == "no markers\n"


def test_the_repository_benchmarks_md_has_the_markers():
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    json.loads((ROOT / "bench" / "results.json").read_text())


def test_a_host_without_native_bf16_adds_its_rows_beside_the_bf16_ones(monkeypatch):
    import common

    monkeypatch.setattr(common, "host_class", lambda: "fp32")
    assert common.results_key("ppo") == "ppo@fp32" and common.results_key("ppo", "bf16") == "ppo"
    fp32 = {**RESULTS["ppo"], "baseline_s_per_step": 60.0, "ours_s_per_step": 40.0, "speedup": 1.5,
            "machine": "AMD EPYC [AVX2], 2 cores"}
    table = render_table({**RESULTS, "ppo@fp32": fp32, "dcgan@fp32": {"error": "OSError: no data"}}).splitlines()
    ppo_rows = [line for line in table if "PPO step" in line]
    assert len(ppo_rows) == 2  # neither record replaces the other
    assert ppo_rows[0].startswith("| PPO step") and "**2.50×**" in ppo_rows[0]
    assert ppo_rows[1].startswith("| **no native bf16 (fp32 host):** PPO step")
    assert "60.0" in ppo_rows[1] and "**1.50×**" in ppo_rows[1] and "AMD EPYC [AVX2]" in ppo_rows[1]
    assert any("no native bf16" in line and "failed: OSError: no data" in line for line in table)
