#!/usr/bin/env bash
# The reproduction study behind docs/results.md: every sweep, in order of the paper's claims.
# Resumable: run it again and finished runs are skipped (rtu-edge sweep). From the repo root:
#   bash benchmarks/study/run.sh            # all of them (hours on 2 cores)
#   bash benchmarks/study/run.sh 1_ 2_      # only the specs whose names start so
set -uo pipefail
cd "$(dirname "$0")/../.."
specs=(1_trace_rtrl 1_trace_tbptt 1_trace_tbptt_lambda 1_trace_lru_init 1_isi30_rtrl 1_isi30_tbptt 2_time_vs_T 2_time_rtrl 3_patterning_cells 1_trace_lr 7_ppo_stale_fresh 8_cartpole_ac
       8_memory_chain 4_mujoco 5_reacher 6_popgym 3_patterning_placement_rtu
       3_patterning_placement_lru)
for s in "${specs[@]}"; do
  if [ $# -gt 0 ]; then
    keep=0; for p in "$@"; do [[ $s == $p* ]] && keep=1; done
    [ $keep = 1 ] || continue
  fi
  echo "== $s $(date -u +%H:%M:%S)"
  rtu-edge sweep "benchmarks/study/$s.toml" || echo "== $s: sweep exited $?"
done
echo "== all done $(date -u +%H:%M:%S)"
