#!/usr/bin/env bash
# The whole tiny pipeline on this CPU, end to end, with the wall time of every stage:
#   teacher -> ODE init -> evaluator nets -> {Self Forcing + DMD | Self Forcing + ASD} -> scorecards.
#     bash pipeline.sh                 # everything into out/pipeline (53 min on 2026-11-26's CPU before the lanes; ~110 on a slower one)
#     O=out/p2 bash pipeline.sh        # another folder
#     TEACHER_STEPS=3000 ASD_FLAGS= O=out/t3k bash pipeline.sh   # the pipeline shipped until commit 83ee513
#     SKIP="teacher ode" O=out/p2 bash pipeline.sh               # reuse the teacher and ODE init already in out/p2
# Every stage is the plain command a user would type; the stage table goes to $O/stages.md and
# the results table to $O/results.md. Nothing here is read from ckpt/: it starts from nothing.
# Two choices differ from the scripts' defaults, both measured in the README: the teacher trains
# 5000 steps (not 3000: direction 0.96 vs 0.78, shape 0.43 vs 0.38), and ASD's discriminator
# compares the n- and (n+1)-step outputs of one noise with the relativistic loss, weighted per n,
# on inputs noised at sigma <= shift(0.1) (ASD_FLAGS without --d_sigma_max=0.1: the pipeline of 7d80ac7).
# After the evaluator, two lanes run side by side with half the cores each: DMD and ASD both start
# from ode.pt, and small-batch work scales poorly over threads (on 2 cores, two 1-thread jobs do
# 1.4x the work of one 2-thread job; README, Performance).
TEACHER_STEPS=${TEACHER_STEPS:-5000}
ASD_FLAGS=${ASD_FLAGS---d_pair=true --d_loss=rpgan --alpha_n=0.3,0.1,0.1 --d_sigma_max=0.1}
set -euo pipefail
cd "$(dirname "$0")"
O=${O:-out/pipeline}
PY=${PY:-python}
SKIP=${SKIP:-}
T=$(( $(nproc) >= 4 ? $(nproc) / 2 : 1 ))     # threads per job in the side-by-side lanes
mkdir -p "$O"
echo "| stage | command | wall time |" > "$O/stages.md"
echo "|---|---|---|" >> "$O/stages.md"
T_ALL=$SECONDS
stage() {   # stage NAME COMMAND...: run it, log its output, append its wall time to the table
  local name=$1 t0=$SECONDS; shift
  if [[ " $SKIP " == *" $name "* ]]; then echo "== $name: skipped (SKIP), reusing $O"; return; fi
  echo "== $name: $*"
  "$@" > "$O/$name.out" 2>&1 || { echo "stage $name failed, see $O/$name.out"; tail -5 "$O/$name.out"; exit 1; }
  local dt=$((SECONDS - t0))
  printf '| %s | `%s` | %d min %02d s |\n' "$name" "$*" $((dt / 60)) $((dt % 60)) | tee -a "$O/stages.md"
}

stage teacher $PY teacher.py --steps=$TEACHER_STEPS --out=$O
stage ode $PY distill.py --stage=ode --teacher=$O/teacher_ema.pt --out=$O
stage evaluator $PY eval.py --train=true --evaluator=$O/evaluator.pt
E="--evaluator=$O/evaluator.pt --out=$O/eval --threads=$T"
scores() {   # scores CKPT: the scorecards of a student at 1*, 1, 2*, 2 and 4 steps
  for s in "1 --ffe=true" "1 --ffe=false" "2 --ffe=true" "2 --ffe=false" "4"; do
    $PY eval.py --ckpt=$1 --steps=$s $E
  done
}
lane_a() {
  stage score_teacher $PY eval.py --ckpt=$O/teacher_ema.pt --steps=16 --name=teacher_16 $E
  stage score_ode $PY eval.py --ckpt=$O/ode.pt --steps=4 --name=ode_4 $E
  stage dmd $PY distill.py --method=dmd --threads=$T --teacher=$O/teacher_ema.pt --init=$O/ode.pt --out=$O
  stage score_dmd scores $O/dmd_ema.pt
}
lane_b() {
  stage asd $PY distill.py --method=asd $ASD_FLAGS --threads=$T --teacher=$O/teacher_ema.pt --init=$O/ode.pt --out=$O
  stage score_asd scores $O/asd_ema.pt
}
t_lanes=$SECONDS
lane_a & A=$!
lane_b & B=$!
wait $A || { kill $(pgrep -P $B) $B 2>/dev/null; exit 1; }     # lane a failed: stop lane b and its job
wait $B
dt=$((SECONDS - t_lanes))
printf '| lanes a + b | side by side, %d thread(s) each | %d min %02d s |\n' $T $((dt / 60)) $((dt % 60)) | tee -a "$O/stages.md"
dt=$((SECONDS - T_ALL))
printf '| **total** | `%sbash pipeline.sh` | **%d min %02d s** |\n' "${SKIP:+SKIP=\"$SKIP\" }" $((dt / 60)) $((dt % 60)) | tee -a "$O/stages.md"
J=$O/eval
$PY eval.py --table=$J/teacher_16.json,$J/ode_4.json,$J/dmd_ema_4.json,$J/asd_ema_4.json,$J/dmd_ema_2.json,$J/asd_ema_2.json,$J/dmd_ema_2star.json,$J/asd_ema_2star.json,$J/dmd_ema_1.json,$J/asd_ema_1.json,$J/dmd_ema_1star.json,$J/asd_ema_1star.json > "$O/results.md"
for s in 1star 1 2star 2 4; do
  echo "ASD - DMD at $s:" >> "$O/results.md"
  $PY eval.py --compare=$J/dmd_ema_$s.json,$J/asd_ema_$s.json >> "$O/results.md"
done
cat "$O/stages.md" "$O/results.md"
