#!/usr/bin/env bash
# Submits a build split into parts: a plan job, an array of part jobs after it, a merge job
# after every part (launch/slurm/build.sbatch runs each step).
#   CSV=/shared/import/frames.csv OUT=/shared/datasets/us PARTS=32 launch/slurm/build_submit.sh
#   CSV=... OUT=... PARTS=32 MAX_RUNNING=8 launch/slurm/build_submit.sh --image-size 256 --seed 1
# Arguments are build options (given to the plan; the parts and the merge take them from it).
# MAX_RUNNING: parts running at once (the array's %M, default 8). SBATCH_ARGS: extra sbatch
# options for every job (e.g. "--partition=cpu --account=lab").
# Run it again after a failure (once its jobs have ended: squeue -u $USER): the plan step keeps
# the plan (or refuses if the CSV or options changed), only the parts without a finished marker
# ($OUT/.work/part-III/done.json) are resubmitted, and the merge runs after them.
set -euo pipefail
: "${CSV:?set CSV, the frames CSV}" "${OUT:?set OUT, the dataset folder}"
PARTS=${PARTS:?set PARTS, the number of parts}
MAX_RUNNING=${MAX_RUNNING:-8}
SBATCH=${SBATCH:-sbatch}
HERE=$(cd "$(dirname "$0")" && pwd)
export CSV OUT PARTS BUILD_ARGS="$*"
read -r -a EXTRA <<< "${SBATCH_ARGS:-}"

todo=()
for ((i = 0; i < PARTS; i++)); do
  [[ -f "$OUT/.work/part-$(printf %03d "$i")/done.json" ]] || todo+=("$i")
done
if [[ -f "$OUT/index.parquet" && ! -d "$OUT/.work/plan" ]]; then
  todo=()   # already merged: the plan step says whether it is from this CSV and options
fi

plan=$($SBATCH --parsable "${EXTRA[@]}" --export=ALL,STEP=plan "$HERE/build.sbatch")
echo "plan: job $plan"
after=$plan
if ((${#todo[@]})); then
  if ((${#todo[@]} == PARTS)); then
    list="0-$((PARTS - 1))"
  else
    list=$(IFS=,; echo "${todo[*]}")
  fi
  array=$($SBATCH --parsable "${EXTRA[@]}" --dependency=afterok:"$plan" --array="$list%$MAX_RUNNING" \
          --export=ALL,STEP=part "$HERE/build.sbatch")
  echo "parts $list: array job $array"
  after=$array
fi
merge=$($SBATCH --parsable "${EXTRA[@]}" --dependency=afterok:"$after" --export=ALL,STEP=merge "$HERE/build.sbatch")
echo "merge: job $merge (after job $after)"
