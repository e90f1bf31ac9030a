#!/usr/bin/env bash
# [scale-train] on one machine with several GPUs: SiD and SiDA distillation of DDPM++ CIFAR-10 (random teacher weights:
# speed and agreement only), 128 images per GPU, --compile reduce-overhead, on 1, 2, 4, 8 GPUs (as many as it has), then
# `sida bench scaling` over the runs: images/s, scaling efficiency, peak memory (JSON + PNG in bench/results/<device>/).
# Then, per method, the first 200 iterations with one global batch and seed on all GPUs and on one GPU (micro-batched
# to fit), losses logged every iteration and compared (`--compare`), and a SIGTERM mid-run resumed with --resume auto.
#
#   bash bench/scale_train.sh OUT DATA     DATA: CIFAR-10 images (folder or cifar10-jpeg.tar.gz; SiDA's real images)
#
# env: GPUS ("1 2 4 8", cut to the GPU count), METHODS ("sid sida"), RUN_S (seconds per throughput run after its
# compile, 120), STEPS (iterations of the agreement runs, 200). Each torchrun is its own job; nothing else may use the GPUs.
set -uo pipefail
OUT=${1:?out dir}; DATA=${2:?CIFAR-10 data}
mkdir -p "$OUT/runs"
export PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
COUNT=$(nvidia-smi --list-gpus | wc -l)
GPUS=${GPUS:-1 2 4 8}; METHODS=${METHODS:-sid sida}; RUN_S=${RUN_S:-120}; STEPS=${STEPS:-200}
TEACHER=$(python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))' | tail -n 1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"

distill() {   # GPUS METHOD OUT_DIR [sida train distill options...]: a fresh run (an old folder would mix its log in)
    local n=$1 method=$2 dir=$3; shift 3
    local data=(); [ "$method" = sid ] || data=(--data "$DATA")
    [[ " $* " = *" --resume "* ]] || rm -rf "$dir"
    torchrun --standalone --nproc_per_node "$n" -m sida.cli train distill --method "$method" --teacher "$TEACHER" \
        "${data[@]}" --out "$dir" --sample-every 1000M --seed 0 "$@" > "$dir.log" 2>&1
}

# 1. Throughput: 128 per GPU, compiled with CUDA graphs; the first logged windows (compile) are skipped by the harness.
for method in $METHODS; do
    for n in $GPUS; do
        [ "$n" -le "$COUNT" ] || continue
        distill "$n" "$method" "$OUT/runs/$method-g$n" --batch $((128 * n)) --compile reduce-overhead \
            --time-limit $((RUN_S + 300))s --log-every $((128 * n * 10)) --checkpoint-every 1000M
        echo "$method on $n GPU(s): exit $?" | tee -a "$OUT/steps.txt"
    done
done
RUNS=(); for d in "$OUT"/runs/*-g*; do [ -d "$d" ] && RUNS+=("$d"); done     # the run folders, not their .log files
python3 -m sida.cli bench scaling "${RUNS[@]}" --skip 3 --name scaling-ddpmpp-cifar10 2>&1 | tee "$OUT/scaling.txt"

# 2. Agreement: the same global batch and seed on the most GPUs and on one (micro-batches of 128 there), 200 iterations.
MOST=1; for n in $GPUS; do [ "$n" -le "$COUNT" ] && MOST=$n; done
[ "$MOST" -gt 1 ] || { echo "one GPU: no agreement or SIGTERM runs" | tee -a "$OUT/steps.txt"; exit 0; }
for method in $METHODS; do
    batch=$((128 * MOST))
    for n in "$MOST" 1; do
        distill "$n" "$method" "$OUT/runs/agree-$method-g$n" --batch $batch --batch-gpu 128 --images $((STEPS * batch)) \
            --log-every $batch --checkpoint-every 1000M
    done
    python3 -m sida.cli bench scaling "$OUT/runs/agree-$method-g$MOST" "$OUT/runs/agree-$method-g1" --skip 0 \
        --compare "$OUT/runs/agree-$method-g$MOST,$OUT/runs/agree-$method-g1" --name "agreement-$method-g$MOST" \
        2>&1 | tee "$OUT/agreement-$method.txt"
done

# 3. SIGTERM mid-run on all GPUs (torchrun passes it to every worker), then --resume auto: the log must go on from the
#    checkpoint the signal wrote.
batch=$((128 * MOST)); dir="$OUT/runs/resume-sid-g$MOST"; rm -rf "$dir"
torchrun --standalone --nproc_per_node "$MOST" -m sida.cli train distill --method sid --teacher "$TEACHER" --out "$dir" \
    --sample-every 1000M --seed 0 --batch $batch --images $((STEPS * batch)) --log-every $batch \
    --checkpoint-every 1000M > "$dir.log" 2>&1 &
job=$!
# Signal once a quarter of the iterations are logged (past start-up, well before the end).
until [ "$(grep -c images_seen "$dir/log.jsonl" 2>/dev/null || echo 0)" -ge $((STEPS / 4)) ] || ! kill -0 $job 2>/dev/null; do
    sleep 1; done
kill -TERM $job; wait $job
echo "signalled at: $(tail -n 1 "$dir/log.jsonl" 2>/dev/null); checkpoints: $(ls "$dir/checkpoints" 2>/dev/null | tr '\n' ' ')" \
    | tee "$OUT/resume.txt"
cp "$dir.log" "$dir-before-signal.log"
distill "$MOST" sid "$dir" --batch $batch --images $((STEPS * batch)) --log-every $batch --checkpoint-every 1000M --resume auto
echo "resumed: exit $?, $(grep -c images_seen "$dir/log.jsonl") log lines (one per iteration: $STEPS expected), last" \
    "$(tail -n 1 "$dir/log.jsonl")" | tee -a "$OUT/resume.txt"
