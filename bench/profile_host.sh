#!/usr/bin/env bash
# Where the demo's training time goes on this host, and how fast it decodes (issue 27, items 3 and 4): the phase
# profiles of the PPO, GRPO, DPO and reward-model steps and the decode speed of each weight format, one raw file
# each in OUTDIR. Needs checkpoints/reward (or RLHFLAB_CHECKPOINTS pointing at a store with one). Run it on a quiet
# machine: every figure is a time. On a bf16 host, ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 emulates an AVX2
# one (each file's machine line says "(emulated)").
#     bash bench/profile_host.sh OUTDIR
set -euo pipefail
out=${1:?usage: bash bench/profile_host.sh OUTDIR}
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
mkdir -p "$out"
run() {  # name, then the command: stdout to OUTDIR/name.txt, the rest of the output to OUTDIR/name.log
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "$out/$name.txt" 2> "$out/$name.log"
  echo "   $((SECONDS - t0)) s"
}
run decode_speed "$py" bench/bench_decode_cpu.py --part speed
run ppo_phases "$py" bench/ppo_phases.py --steps 4
run grpo_phases "$py" bench/step_phases.py --step grpo --max-steps 4
run dpo_phases "$py" bench/step_phases.py --step dpo
run reward_phases "$py" bench/step_phases.py --step reward
