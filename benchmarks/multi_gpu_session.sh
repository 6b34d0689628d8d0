#!/usr/bin/env bash
# Issues 8 and 9 on one multi-GPU host, every phase in one go (about 25 minutes on 4 GPUs at 7B size,
# longer than one device call: start it detached and collect $RESULTS later).
#
#   1. the fake 7B world (benchmarks/fake_world.py)
#   2. side by side: posttrain on 1 GPU (the DDP baseline) | dit_speed's training-step profile
#   3. posttrain on all N GPUs, --grad-accum 2, a save, SIGTERM, --resume to the end
#   4. the same load per GPU (one prompt, --stages both, 35 steps): side by side, infer on N-1 GPUs
#      with N-1 prompts | infer on 1 GPU with 1 prompt; with INFER_ON_ALL=1, infer on 1 GPU, then
#      on all N with N prompts (the users' command; one more video time of device time)
#
# Running the 1-GPU baselines beside the N-GPU work keeps both under the same host load and costs no
# extra device time. nvidia-smi's memory use per GPU is sampled every 5 s into gpu_memory.csv.
#
#   RESULTS=out WORLD_ROOT=/tmp/world bash benchmarks/multi_gpu_session.sh
#   PHASES=posttrain ...    only steps 1-3 (PHASES=infer: 1 and 4)
#   WORLD=tiny NGPU=2 ...   the same phases on the tiny model and CPU processes (no profile)
set -u
world=${WORLD:-7b}
phases=${PHASES:-posttrain infer}
root=${WORLD_ROOT:?set WORLD_ROOT}
results=${RESULTS:?set RESULTS}
here=$(dirname "$0")
mkdir -p "$results"
if [ "$world" = tiny ]; then
  n=${NGPU:-2}
  visible() { shift; "$@"; }  # CPU processes: nothing to pin
else
  n=${NGPU:-$(nvidia-smi -L | wc -l)}
  visible() { CUDA_VISIBLE_DEVICES="$1" "${@:2}"; }
  nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader -l 5 > "$results/gpu_memory.csv" &
  sampler=$!
fi
bench() { python3 "$here/multi_gpu.py" --root "$root" --world "$world" "$@"; }
phase() { echo "$(date +%T) $*" >> "$results/progress.log"; }

posttrain_phases() {
  phase "posttrain on 1 GPU | training-step profile"
  local pids=()
  visible 0 bench --phase posttrain-1 --out "$results/posttrain_1.json" > "$results/posttrain_1.log" 2>&1 &
  pids+=($!)
  if [ "$world" != tiny ]; then
    visible 1 python3 "$here/dit_speed.py" --variants ours --cfg-variants "" --profile-train \
      --out "$results/train_profile.json" > "$results/train_profile.log" 2>&1 &
    pids+=($!)
  fi
  wait "${pids[@]}"

  phase "posttrain on $n GPUs with SIGTERM and resume"
  bench --phase posttrain-n --nproc "$n" --steps 20 --save-every 10 --out "$results/posttrain_n.json" \
    > "$results/posttrain_n.log" 2>&1
}

infer_phases() {
  if [ "${INFER_ON_ALL:-0}" = 1 ]; then
    phase "infer on 1 GPU, then on $n GPUs"
    visible 0 bench --phase infer-1 --out "$results/infer_1.json" > "$results/infer_1.log" 2>&1
    bench --phase infer-n --nproc "$n" --out "$results/infer_n.json" > "$results/infer_n.log" 2>&1
    return
  fi
  phase "infer on $((n - 1)) GPUs | infer on 1 GPU"
  local pids=()
  visible "$(seq -s, 0 $((n - 2)))" bench --phase infer-n --nproc $((n - 1)) --out "$results/infer_n.json" \
    > "$results/infer_n.log" 2>&1 &
  pids+=($!)
  visible $((n - 1)) bench --phase infer-1 --out "$results/infer_1.json" > "$results/infer_1.log" 2>&1 &
  pids+=($!)
  wait "${pids[@]}"
}

phase "world"
bench --phase world --out "$results/world.json" > "$results/world.log" 2>&1 || exit 1
for name in $phases; do
  "${name}_phases"
done

[ -n "${sampler:-}" ] && kill "$sampler"
phase "done"
touch "$results/DONE"
