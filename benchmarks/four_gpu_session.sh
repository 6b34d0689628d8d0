#!/usr/bin/env bash
# Issues 17 and 19 on one 4-GPU host. PHASES=7b (steps 1-3: about 7 minutes on 4x H100, one device
# call), PHASES=14b (step 4, a call of its own: all four did not fit one 10-minute call on 2026-11-28),
# PHASES=warm (step 5, a call of its own: about 8 minutes):
#   1. the fake 7B world; meanwhile, where a worker's start-up goes (import times, CUDA init)
#   2. the users' command: one prompt, `infer --stages both`, 35 steps, --nproc 4 (multi_gpu.py infer-n)
#   3. one 7B video on 1 GPU and on 4 (CFG x 2 token shards), 3 timed steps (one_video_many_gpus.py)
#   4. the fake 14B world and one 14B video on 4 GPUs, then on 1 (the scaling), 3 timed steps
#   4b. (PHASES=14b-warm, a call of its own) step 4's 4-GPU video twice: cold, then warm compile cache
#   5. the users' command of step 2 twice in a row: cold, then with torch.compile's on-disk cache warm
#      (what a user's second `infer` on the same machine sees)
#
#   RESULTS=out WORLD_ROOT=/tmp/world PHASES=7b bash benchmarks/four_gpu_session.sh
set -u
phases=${PHASES:-7b 14b}
results=${RESULTS:?set RESULTS}
root=${WORLD_ROOT:-/tmp/world}
here=$(dirname "$0")
mkdir -p "$results"
phase() { echo "$(date +%T) $*" >> "$results/progress.log"; }
nvidia-smi --query-gpu=timestamp,index,memory.used --format=csv,noheader -l 5 > "$results/gpu_memory.csv" &
sampler=$!

if [[ " $phases " == *" 7b "* ]]; then
phase "7B world | start-up probes"
python3 "$here/fake_world.py" --root "$root/7b" --clips 1 > "$results/world_7b.log" 2>&1 &
world=$!
python3 -X importtime -c "import cosmos_lora.infer.run" 2> "$results/importtime_infer_run.txt"
python3 -c "import time; t = time.time(); import torch; a = time.time(); torch.cuda.init(); torch.zeros(1, device='cuda'); \
print(f'import torch {a - t:.2f} s, CUDA context {time.time() - a:.2f} s')" > "$results/cuda_init.txt" 2>&1
wait "$world"

phase "7B: one prompt, --stages both, 4 GPUs"
timeout 300 python3 "$here/multi_gpu.py" --root "$root/7b" --phase infer-n --nproc 4 --prompts 1 \
  --out "$results/infer_both_4gpu.json" > "$results/infer_both_4gpu.log" 2>&1
find "$root/7b/outputs/infer" -name "seed_*.json" -exec sh -c 'cp "$1" "$2/sidecar_$(basename $(dirname $(dirname "$1")))_$(basename "$1")"' _ {} "$results" \;

phase "7B: one video on 1 and 4 GPUs"
python3 "$here/one_video_many_gpus.py" --root "$root/7b" --out "$results/one_video_7b.json" --steps 3 --variants 1,4cfg \
  --timeout 170 > "$results/one_video_7b.log" 2>&1

fi

if [[ " $phases " == *" 14b "* ]]; then
phase "14B world and one 14B video on 4 GPUs"
rm -rf "$root/7b/checkpoints/Cosmos-Predict1-7B-Text2World"  # disk and page cache for the 14B
python3 "$here/fake_world.py" --root "$root/14b" --clips 1 --size 14b > "$results/world_14b.log" 2>&1
python3 "$here/one_video_many_gpus.py" --size 14b --root "$root/14b" --out "$results/one_video_14b.json" --steps 3 \
  --variants 4cfg,1 --timeout 330 > "$results/one_video_14b.log" 2>&1
fi
if [[ " $phases " == *" 14b-warm "* ]]; then
phase "14B world, then one 14B video on 4 GPUs twice (cold, warm compile cache)"
python3 "$here/fake_world.py" --root "$root/14b" --clips 1 --size 14b > "$results/world_14b.log" 2>&1
for pass in cold warm; do
  python3 "$here/one_video_many_gpus.py" --size 14b --root "$root/14b" --out "$results/one_video_14b_$pass.json" \
    --steps 3 --variants 4cfg --timeout 200 > "$results/one_video_14b_$pass.log" 2>&1
done
fi
if [[ " $phases " == *" warm "* ]]; then
phase "7B world, then --stages both on 4 GPUs twice (cold, warm compile cache)"
python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1  # bytecode, as pip install leaves it (gpu_env.sh does not)
python3 "$here/fake_world.py" --root "$root/7b" --clips 1 > "$results/world_7b.log" 2>&1
for pass in cold warm; do
  timeout 280 python3 "$here/multi_gpu.py" --root "$root/7b" --phase infer-n --nproc 4 --prompts 1 \
    --out "$results/infer_both_4gpu_$pass.json" > "$results/infer_both_4gpu_$pass.log" 2>&1
  find "$root/7b/outputs/infer" -name "seed_*.json" -exec sh -c 'cp "$1" "$2/sidecar_$3_$(basename $(dirname $(dirname "$1")))_$(basename "$1")"' _ {} "$results" "$pass" \;
done
fi
kill "$sampler"
phase "done"
