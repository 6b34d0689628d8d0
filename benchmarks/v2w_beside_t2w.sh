#!/usr/bin/env bash
# Issues 22 and 18 on one 2-GPU host in one device call: the 7B Video2World beside the 7B Text2World.
#
#   GPU 0: fake 7B Video2World world, one V2W video continuing an image (35 steps, infer_7b.py --variant v2w),
#          then 3 Video2World training steps (posttrain_7b.py --variant v2w)
#   GPU 1: fake 7B Text2World world, one T2W video (T2W_STEPS steps: its s/CFG step is the comparison),
#          then 3 Text2World training steps with an evaluation pass on 2 held-out clips at steps 0, 2, 3
#
#   RESULTS=out WORLD_ROOT=/tmp/world bash benchmarks/v2w_beside_t2w.sh
set -u
results=${RESULTS:?set RESULTS}
root=${WORLD_ROOT:-/tmp/world}
here=$(dirname "$0")
mkdir -p "$results"
nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader -l 5 > "$results/gpu_memory.csv" &
sampler=$!
(
  export CUDA_VISIBLE_DEVICES=0
  python3 "$here/infer_7b.py" --root "$root/v2w" --variant v2w --out "$results/infer_v2w.json" > "$results/infer_v2w.log" 2>&1
  python3 "$here/posttrain_7b.py" --root "$root/v2w" --variant v2w --nproc 1 --first 3 --total 3 \
    --out "$results/posttrain_v2w.json" > "$results/posttrain_v2w.log" 2>&1
) &
v2w=$!
(
  export CUDA_VISIBLE_DEVICES=1
  python3 "$here/infer_7b.py" --root "$root/t2w" --steps "${T2W_STEPS:-15}" --out "$results/infer_t2w.json" \
    > "$results/infer_t2w.log" 2>&1
  python3 "$here/posttrain_7b.py" --root "$root/t2w" --nproc 1 --first 3 --total 3 --eval-clips 2 --eval-every 2 \
    --out "$results/posttrain_t2w_eval.json" > "$results/posttrain_t2w_eval.log" 2>&1
) &
t2w=$!
wait "$v2w" "$t2w"
kill "$sampler"
touch "$results/DONE"
