#!/usr/bin/env bash
# The whole pipeline from nothing (no file of ckpt/ is read), stage by stage, then the results table:
#   bash pipeline.sh          # CPU tier: the shipped recipe, tiny model; ~2 h on 2 cores (times below:
#                             # a 2-core AVX2 CPU, results/pipeline_avx2_stages.md; 53 min on a faster CPU)
#   bash pipeline.sh gpu      # one-GPU tier: a wider teacher, more steps (bf16; sized for ~8 min, not run yet)
#   bash pipeline.sh test     # every stage in a few steps, to check an install (the test suite runs it)
#   bash pipeline.sh tiny64   # the world drawn at 64 px (patch 8, width 256: ~2.5x the CPU tier; not run yet)
# Output: out/pipeline_<tier>/ with the checkpoints, logs, scorecards (eval/*.json) and results.md.
set -euo pipefail
cd "$(dirname "$0")"
TIER=${1:-cpu}
O=out/pipeline_$TIER
P=--preset=$TIER
mkdir -p $O
python teacher.py $P --out=$O                                              # 47 min: 5000 steps x 8 videos
python distill.py $P --method=ode --teacher=$O/teacher_ema.pt --out=$O      # 10 min: 256 trajectories, 600 steps
python distill.py $P --method=dmd --teacher=$O/teacher_ema.pt --out=$O      # 17 min: 600 iterations
python distill.py $P --method=asd --teacher=$O/teacher_ema.pt --out=$O      # 29 min: 600 iterations
[ -f $O/evaluator.pt ] || python eval.py $P --train=true --evaluator=$O/evaluator.pt   # 2 min
E="$P --evaluator=$O/evaluator.pt --out=$O/eval"
python eval.py $E --ckpt=$O/teacher_ema.pt --steps=16                      # 6 min
python eval.py $E --ckpt=$O/ode.pt --steps=4                               # 1 min
for m in dmd asd; do                                                       # 1 min each
  python eval.py $E --ckpt=$O/${m}_ema.pt --steps=1 --ffe=false
  python eval.py $E --ckpt=$O/${m}_ema.pt --steps=1
  python eval.py $E --ckpt=$O/${m}_ema.pt --steps=2 --ffe=false
  python eval.py $E --ckpt=$O/${m}_ema.pt --steps=2
  python eval.py $E --ckpt=$O/${m}_ema.pt --steps=4
done
J=$O/eval
python eval.py --table=$J/teacher_ema_teacher16.json,$J/ode_4.json,$J/dmd_ema_4.json,$J/asd_ema_4.json,\
$J/dmd_ema_2.json,$J/asd_ema_2.json,$J/dmd_ema_2star.json,$J/asd_ema_2star.json,\
$J/dmd_ema_1.json,$J/asd_ema_1.json,$J/dmd_ema_1star.json,$J/asd_ema_1star.json > $O/results.md
python eval.py --compare=$J/dmd_ema_1.json,$J/asd_ema_1.json >> $O/results.md    # ASD - DMD at 1 step
python eval.py --compare=$J/dmd_ema_1.json,$J/dmd_ema_1star.json >> $O/results.md  # FFE's gain (DMD)
cat $O/results.md
echo "wrote $O/results.md"
