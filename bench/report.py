"""The measured-figures table of BENCHMARKS.md, written from bench/results.json.

`python bench/run_all.py` calls `write_benchmarks_md()` after every bench, so the table always shows the
last measurement of each figure with the command, the machine and the date it was taken. The analysis
around the table (what limits each figure, the next step) is prose in BENCHMARKS.md, outside the markers.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
from common import ROOT

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results.json"
START, END = "<!-- bench-table:start (written by bench/run_all.py) -->", "<!-- bench-table:end -->"
# When the demo profile's PPO recipe last changed (SGD for full PPO, value head at zero, GAE λ 1), in the form
# of results.json's "measured" field: a PPO timing measured earlier timed another recipe and says so.
PPO_DEMO_RECIPE_SINCE = "2026-11-22T21:59+00:00"
HEADER = ["figure", "baseline (same run)", "ours", "ratio", "goal", "command · machine · date"]


def _x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"**{value:.{digits}f}×**"


def _where(r: dict) -> str:
    machine = r.get("machine") or r.get("hardware") or "?"
    return f"`{r.get('command', '?')}` · {machine} · {str(r.get('measured', '?'))[:16].replace('T', ' ')}"


def _rows(results: dict) -> list[list[str]]:
    rows = []
    g = results.get("generation", {})
    if (d := g.get("decode_batch1")) and "speedup_fp32" in d:
        met = d["speedup_fp32"] >= 2 and d["fraction_of_limit_fp32"] >= 0.6
        rows.append([
            "chat decode, batch 1, 135M policy, greedy (tokens/s)",
            f"`generate()` fp32: {d['baseline_tok_s']:.1f}",
            f"lean KV-cache loop fp32: {d['ours_fp32_tok_s']:.1f} (bf16 weights {d['ours_bf16_tok_s']:.1f}; "
            f"int8 dynamic, outputs differ: {d['ours_int8_dynamic_tok_s']:.1f}); "
            f"{d['fraction_of_limit_fp32'] * 100:.0f} % of the bandwidth limit "
            f"({d['bandwidth_limit_fp32_tok_s']:.1f} tok/s = {d['bandwidth_gb_s']:.1f} GB/s ÷ {d['weights_mb_fp32']:.0f} MB)",
            _x(d["speedup_fp32"]), f"2× and 60 %: {'met' if met else '**not met**'}", _where(g)])
    if e := g.get("eval_batched_vs_loop"):
        rows.append([
            f"evaluation generation, {e['prompts']} prompts × {e['new_tokens']} tokens (s)",
            f"one prompt at a time: {e['loop_s']:.1f}", f"batched, left padding: {e['batched_s']:.1f} "
            f"({e['identical_outputs']}/{e['prompts']} outputs identical)", _x(e["speedup"]),
            f"≥ 4×: {'met' if e['speedup'] >= 4 else '**not met**'}", _where(g)])
    if d := g.get("decode_batch1", {}).get("app_default"):
        rows.append(_app_decode_row(d, g.get("decode_batch1", {}), _where(g)))
    if (e := g.get("engine_batches")) and e.get("rows"):
        rows.append(_engine_batches_row(e, _where(g)))
    if rb := g.get("rollout_batches"):
        rows.append(_rollout_batches_row(rb, _where(g)))
    if (q := results.get("int8")) and "speed" in q:
        rows.append(_int8_row(q))
    if (p := results.get("ppo")) and "equal_work" in p:
        rows.extend(_equal_work_rows(p, "PPO step", "s/step", _ppo_side))
    elif (p := results.get("ppo")) and "speedup" in p:
        ours = p["ours"]
        if str(p.get("measured", "")) < PPO_DEMO_RECIPE_SINCE:
            # bench_ppo.py times whatever the demo profile is when it runs; a record from before the profile's
            # last recipe change must not be read as timing today's recipe.
            ours = ours.replace("rlhflab demo defaults", "rlhflab demo defaults of that day") + (
                ", measured before the demo switched full PPO to SGD and a zero value head: AdamW, reward-model head")
        rows.append([p["benchmark"] + " (s/step)", f"{p['baseline']}: {p['baseline_s_per_step']:.1f}",
                     f"{ours}: {p['ours_s_per_step']:.1f}", _x(p["speedup"]),
                     f"2×: {'met' if p['speedup'] >= 2 else '**not met**'}", _where(p)])
    if (g := results.get("grpo")) and "equal_work" in g:
        rows.extend(_equal_work_rows(g, "GRPO step", "s/step", _ppo_side))
    if (r := results.get("reward")) and "equal_work" in r:
        rows.extend(_equal_work_rows(r, "reward-model training", "s/step", _reward_side))
    elif (r := results.get("reward")) and "speedup" in r:
        rows.append([r["benchmark"] + " (pairs/s)", f"{r['baseline']}: {r['baseline_pairs_per_s']:.2f}",
                     f"{r['ours']}: {r['ours_pairs_per_s']:.2f}", _x(r["speedup"]), "—", _where(r)])
    if (d := results.get("dcgan")) and "speedup" in d:
        rows.append(["DCGAN training (images/s)", f"medmnist per-image PIL + DataLoader: {d['baseline_images_per_s']:.0f}",
                     f"in-memory tensor + randperm slices: {d['ours_images_per_s']:.0f} (data path alone "
                     f"{d['data_only_images_per_s']['ours']:.0f} vs {d['data_only_images_per_s']['baseline']:.0f})",
                     _x(d["speedup"]), "—", _where(d)])
    if (a := results.get("app")) and "cold_start_s" in a:
        first, second = a["first_request"], a["second_request"]
        rows.append(["app cold start (s)", "—", f"server answering after {a['cold_start_s']:.1f}", "—",
                     f"< 20 s: {'met' if a['cold_start_s'] < 20 else '**not met**'}", _where(a)])
        rows.append(["time to first streamed token (s)", f"first request (loads the model): {first['first_token_s']:.2f}",
                     f"next request: {second['first_token_s']:.2f}", "—",
                     f"< 1 s after load: {'met' if second['first_token_s'] < 1 else '**not met**'}", _where(a)])
        rows.append(["app memory (MB)", f"after start: {a['rss_after_start_mb']:.0f}",
                     f"all models loaded ({', '.join(a.get('models') or [])}): {a['rss_all_models_loaded_mb']:.0f}",
                     "—", "—", _where(a)])
    if (p := results.get("pipeline")) and "speedup" in p:
        rows.append([p["benchmark"] + f", {p['steps_per_run']} steps each (s)", f"{p['baseline']}: {p['baseline_s']:.1f}",
                     f"{p['ours']}: {p['ours_s']:.1f}", _x(p["speedup"]), "—", _where(p)])
    if (ld := results.get("load")) and "requests" in ld:
        lat = ld["latency_s"]
        rows.append([f"app under load: {ld['clients']} sessions × {ld['duration_s']:.0f} s",
                     f"memory after warm-up: {ld['rss_after_warm_up_mb']:.0f} MB",
                     f"{ld['requests']} requests, {ld['failed']} failed, {ld['lost']} lost; chat p50/p95 "
                     f"{lat['chat']['p50_s']:.1f}/{lat['chat']['p95_s']:.1f} s, score p50/p95 "
                     f"{lat['score']['p50_s']:.2f}/{lat['score']['p95_s']:.2f} s; memory at the end "
                     f"{ld['rss_end_mb']:.0f} MB", f"{ld['rss_end_over_warm_up']:.3f}× memory",
                     f"0 failed, ≤ {1 + ld['max_memory_growth']:.2f}× memory: {'met' if ld['passed'] else '**not met**'}",
                     _where(ld)])
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "—", f"failed: {r['error']}", "—", "—", "—"])
    return rows


def _app_decode_row(d: dict, decode: dict, where: str) -> list[str]:
    """Chat decode on the app's default path: generate() against the engine at the same precision."""
    met = d["speedup"] >= 2 and d["fraction_of_limit"] >= 0.6
    ttft = d.get("time_to_first_token_after_load_s")
    ttft_met = ttft is not None and ttft < 0.5
    same = {True: "greedy outputs = generate()'s", False: "greedy outputs differ from generate()'s"}.get(
        d.get("greedy_equals_generate"), "")
    bw = decode.get("bandwidth_gb_s")
    limit = (f"{d['fraction_of_limit'] * 100:.0f} % of the bandwidth limit ({d['bandwidth_limit_tok_s']:.1f} tok/s = "
             + (f"{bw:.1f} GB/s ÷ " if bw else "bandwidth ÷ ") + f"{d['bytes_per_token_mb']:.0f} MB read per token)")
    return [f"chat decode, app default path ({d['dtype']}), batch 1, greedy (tokens/s)",
            f"`generate()` {d['dtype']}: {d['generate_tok_s']:.1f}",
            f"decode engine ({d.get('engine', '?')}): {d['engine_tok_s']:.1f}; {limit}; {same}; time to first token "
            f"after load {_num(ttft, 2)} s (load {_num(d.get('load_s'), 1)} s)",
            _x(d["speedup"]), f"2× and 60 %: {'met' if met else '**not met**'}; first token < 0.5 s: "
                              f"{'met' if ttft_met else '**not met**'}", where]


def _int8_row(q: dict) -> list[str]:
    """Weight-only int8 decode: its speed beside the app's bf16 path and what it costs in KL and reward."""
    sp, ql = q["speed"], q["quality"]
    lo, hi = ql["kl_ci"]
    dlo, dhi = ql["reward_diff_ci"]
    return ["chat decode with int8 weights (`use_int8_decode`), batch 1, greedy (tokens/s); not adopted",
            f"`generate()` bf16: {sp['generate_tok_s']:.1f}; engine bf16: {sp['bf16_tok_s']:.1f}",
            f"engine int8: {sp['int8_tok_s']:.1f} ({sp['int8_over_bf16_engine']:.2f}× the bf16 engine; "
            f"{sp['int8_fraction_of_limit'] * 100:.0f} % of its bandwidth limit at {sp['int8_bytes_per_token_mb']:.0f} "
            f"MB/token); cost over {ql['tokens']} sampled tokens: exact KL(bf16 ‖ int8) "
            f"{ql['kl_exact_bf16_int8_per_token']:.4f} [{lo:.4f}, {hi:.4f}] nats/token, top-1 agreement "
            f"{ql['top1_agreement'] * 100:.1f} %, reward change {ql['reward_diff_int8_minus_bf16']:+.2f} "
            f"[{dlo:+.2f}, {dhi:+.2f}] ({ql['prompts']} prompts)",
            _x(sp["int8_over_generate"]), "adopted only if its cost is small: **not adopted** (KL as large as a "
                                          "DPO run's change)", _where(q)]


def _engine_batches_row(e: dict, where: str) -> list[str]:
    rows = sorted(e["rows"], key=lambda r: r["batch"])
    rates = ", ".join(f"{r['batch']}: {r['tok_s']:.0f}" for r in rows)
    first, best = rows[0], max(rows, key=lambda r: r["tok_s"])
    new = rows[0].get("new_tokens")
    return [f"decode engine tokens/s at batch {'/'.join(str(r['batch']) for r in rows)} ({e.get('dtype', '?')}, "
            f"greedy{f', {new} new tokens' if new else ''})",
            f"batch {first['batch']}: {first['tok_s']:.1f}",
            f"{rates} (engine {e.get('engine', '?')}; ratio: batch {best['batch']} ÷ batch {first['batch']})",
            _x(best["tok_s"] / first["tok_s"]), "—", where]


def _rollout_batches_row(rows: list[dict], where: str) -> list[str]:
    rows = sorted(rows, key=lambda r: r["batch"])
    sizes = "/".join(str(r["batch"]) for r in rows)
    best = max(rows, key=lambda r: r["engine_tok_s"])
    return [f"rollout sampling tokens/s at batch {sizes} (the trainers' path: fp32 weights under bf16 autocast, "
            f"repacked every call; temperature 0.7, {rows[0]['new_tokens']} new tokens)",
            "`generate()`: " + ", ".join(f"{r['batch']}: {r['generate_tok_s']:.0f}" for r in rows),
            "decode engine: " + ", ".join(f"{r['batch']}: {r['engine_tok_s']:.0f} ({r['speedup']:.2f}×)" for r in rows)
            + f"; cheapest per rollout token: batch {best['batch']}",
            _x(best["speedup"]) + f" at batch {best['batch']}", "—", where]


def _num(x, digits: int) -> str:
    return "?" if x is None else f"{x:.{digits}f}"


def _steps(s: dict) -> str:
    """Median [min–max] of the timed steps, with their count."""
    return f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}] (n = {s['n']})"


def _ppo_side(record: dict, side: str) -> str:
    return _steps(record[f"{side}_steps"])


def _reward_side(record: dict, side: str) -> str:
    run = record[f"{side}_run"]
    p, lo, hi = run["test_accuracy"]
    return f"{_steps(run['steps'])}; test accuracy {100 * p:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def _equal_work_rows(r: dict, what: str, unit: str, side) -> list[list[str]]:
    """The equal-work row (both sides' work named) and one row per "less work" choice, each with its effect."""
    e, where = r["equal_work"], _where(r)
    ours = f"{e['ours']}: {side(e, 'ours')}"
    if e.get("ours_save_s_per_save"):
        ours += (f"; not counted: {e['ours_saves']} resumable work-state saves, "
                 f"{e['ours_save_s_per_save']['median']:.2f} s each")
    rows = [[f"{what}, equal work: {e['work']} ({unit}, median [min–max] of the steps after 1 warm-up step)",
             f"{e['baseline']}: {side(e, 'baseline')}", ours, _x(e["speedup"]),
             f"2×: {'met' if e['speedup'] >= 2 else '**not met**'}" if what.startswith("PPO") else "—", where]]
    for v in r.get("less_work", []):
        if "without_steps" in v:
            base, mine = _steps(v["without_steps"]), _steps(v["with_steps"])
        else:  # reward rows: whole training time (the cached prefix's one pass included) and per-step times
            base, mine = (f"{_steps(v[k]['steps'])} s/step; {v[k]['pairs_per_s']:.2f} pairs/s over the training"
                          for k in ("without", "with"))
        rows.append([f"{what}, less work: {v['factor']} ({unit})", f"{v['without_label']}: {base}",
                     f"{v['with_label']}: {mine}; effect: {v['effect']}", _x(v["speedup"]), "—", where])
    return rows


def _all_rows(results: dict) -> list[list[str]]:
    """The bf16 host's rows, then the same figures measured on a host without native bf16 (keys name@fp32, written
    by run_all there), each marked so: a ratio is read within its own host, never across the two."""
    bf16 = {k: v for k, v in results.items() if "@" not in k}
    fp32 = {k.split("@", 1)[0]: v for k, v in results.items() if k.endswith("@fp32")}
    return _rows(bf16) + [[f"**no native bf16 (fp32 host):** {row[0]}", *row[1:]] for row in _rows(fp32)]


def render_table(results: dict) -> str:
    from rlhflab.store.cards import markdown_table

    return markdown_table(HEADER, [[c.replace("|", "\\|") for c in row] for row in _all_rows(results)])


def write_benchmarks_md(results: dict | None = None, path: Path = BENCHMARKS_MD) -> bool:
    """Replace the table between the markers; False (file untouched) when the markers are missing."""
    results = json.loads(RESULTS.read_text()) if results is None else results
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{render_table(results)}\n{END}{tail}", encoding="utf-8")
    return True


if __name__ == "__main__":
    print("BENCHMARKS.md table rewritten" if write_benchmarks_md() else f"no markers in {BENCHMARKS_MD}")
