#!/usr/bin/env bash
# [scale-serve] on one machine with several GPUs: `sida serve` on 1, 2, 4, 8 GPUs (as many as it has) for
# ddpmpp-cifar10 and sd15-512 (random weights: speed only), each setup measured with `sida bench http`:
#   - closed loop at rising concurrency (n=16 per request, raw .npy responses): the saturation throughput;
#   - open loop (Poisson) at 80% of that setup's own saturation: the p99 latency under load;
# then `sida bench serve-scaling` over all of them (speed-up against one GPU, targets >= 1.8x at 2 and >= 6.5x at 8,
# p99 no worse; JSON + PNG in bench/results/<device>/).
#
#   bash bench/scale_serve.sh OUT
#
# env: GPUS ("1 2 4 8", cut to the GPU count), MODELS ("ddpmpp sd15"), LAYOUTS ("per-gpu one-process": --workers N with
# one process per GPU, or one process holding N replicas), DURATION (seconds per level, 20), CONCURRENCY per model
# (CONC_ddpmpp "16,64,256", CONC_sd15 "4,16,64"), CLIENTS (client processes, 8). sd15's open loop needs a long
# DURATION for a meaningful p99 (at ~100 requests/s, 20 s is 2,000 requests). Needs the [serve] extra; nothing
# else may use the GPUs. The server's compile cache is kept in OUT/cache, so only the first setup compiles.
set -uo pipefail
OUT=${1:?out dir}
mkdir -p "$OUT/res" "$OUT/logs"
export PYTHONUNBUFFERED=1 SIDA_CACHE_DIR=$OUT/cache
COUNT=$(nvidia-smi --list-gpus | wc -l)
GPUS=${GPUS:-1 2 4 8}; MODELS=${MODELS:-ddpmpp sd15}; LAYOUTS=${LAYOUTS:-per-gpu one-process}
DURATION=${DURATION:-20}; CLIENTS=${CLIENTS:-8}
CONC_ddpmpp=${CONC_ddpmpp:-16,64,256}; CONC_sd15=${CONC_sd15:-4,16,64}
PORT=8123; URL=http://127.0.0.1:$PORT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
declare -A PRESET=([ddpmpp]=ddpmpp-cifar10 [sd15]=sd15-512)

serve_until_warm() {   # LOG N ARGS...: start `sida serve`, wait until N processes logged their 'warm' line (every
                       # bucket of every replica warm), at most 15 minutes
    local log=$1 want=$2; shift 2
    python3 -m sida.cli serve --port $PORT --no-ui --max-batch 64 "$@" > "$log" 2>&1 &
    SERVER=$!
    for _ in $(seq 900); do
        kill -0 $SERVER 2>/dev/null || { echo "server exited: $(tail -3 "$log")"; return 1; }
        grep -q '"event": "warm_failed"' "$log" && { echo "a replica failed to warm: $(grep -m1 warm_failed "$log")"; return 1; }
        [ "$(grep -c '"event": "warm"' "$log")" -ge "$want" ] && return 0
        sleep 1
    done
    echo "not warm after 15 minutes"; return 1
}

stop_server() { [ -n "${SERVER:-}" ] && kill -INT "$SERVER" 2>/dev/null; wait "${SERVER:-}" 2>/dev/null; SERVER=; }
trap stop_server EXIT

for model in $MODELS; do
    bundle=$(python3 -c "from bench.presets import resolve_bundle; print(resolve_bundle('preset:${PRESET[$model]}'))" | tail -n 1)
    conc=CONC_$model
    for layout in $LAYOUTS; do
        for n in $GPUS; do
            [ "$n" -le "$COUNT" ] || continue
            devices=$(seq -s, -f 'cuda:%g' 0 $((n - 1)))
            if [ "$layout" = per-gpu ]; then args=(--workers "$n" --devices "$devices"); warm=$n
            else args=(--devices "$devices"); warm=1; fi
            name=$model-$layout-g$n
            if ! serve_until_warm "$OUT/logs/serve-$name.log" "$warm" --bundle "$bundle" --backend compile "${args[@]}"; then
                echo "$name: no server" | tee -a "$OUT/steps.txt"; stop_server; continue
            fi
            common=(--url "$URL" --n 16 --format npy --response binary --duration "$DURATION" --client-processes "$CLIENTS"
                    --label "$layout" --out "$OUT/res" --no-plot)
            python3 -m sida.cli bench http "${common[@]}" --concurrency "${!conc}" --name "closed-$name" \
                > "$OUT/logs/closed-$name.log" 2>&1
            closed=$(find "$OUT/res" -name "*-closed-$name.json" | sort | tail -n 1)
            if [ -z "$closed" ]; then
                echo "$name: closed loop failed: $(tail -n 1 "$OUT/logs/closed-$name.log")" | tee -a "$OUT/steps.txt"
                stop_server; continue
            fi
            # rate: 80% of saturation in requests/s; served: the GPUs that answered (all n, or the row is suspect)
            read -r rate served < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
print(round(0.8 * max(x['images_per_s'] for x in d['results']) / 16, 2), len(d['settings']['server_devices']))" "$closed")
            [ "$served" = "$n" ] || echo "$name: WARNING only $served of $n GPUs answered" | tee -a "$OUT/steps.txt"
            python3 -m sida.cli bench http "${common[@]}" --rate "$rate" --name "open-$name" > "$OUT/logs/open-$name.log" 2>&1
            echo "$name: closed $(tail -n 2 "$OUT/logs/closed-$name.log" | head -n 1); open at $rate req/s" | tee -a "$OUT/steps.txt"
            stop_server
        done
    done
    mapfile -t results < <(find "$OUT/res" \( -name "*-closed-$model-*.json" -o -name "*-open-$model-*.json" \) | sort)
    [ "${#results[@]}" -gt 0 ] && python3 -m sida.cli bench serve-scaling "${results[@]}" --out "$OUT/res" \
        --name "serve-scaling-${PRESET[$model]}" 2>&1 | tee "$OUT/scaling-$model.txt"
done
