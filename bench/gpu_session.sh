#!/usr/bin/env bash
# The GPU measurements of one lease, one stage per call of at most 10 minutes (the lent machine's limit):
#
#   bench/gpu_session.sh bench   OUT        profile + `sida bench train` (fp32, bf16, bf16 channels-last, compiled)
#   bench/gpu_session.sh variants OUT NAME V1,V2,..  compiled training variants side by side (train_variants.py),
#                                                 PROFILE=V1,.. also profiles those; TEACHER=BUNDLE also runs the
#                                                 real trainer with CUDA graphs first (TIMING_AFTER=290 keeps them apart)
#   bench/gpu_session.sh teacher OUT DATA   a class-conditional CIFAR-10 EDM teacher (zoo architecture), time-boxed
#   bench/gpu_session.sh student OUT DATA TEACHER   SiDA (METHOD=sid: SiD) from that teacher, FD-CIFAR every 20k images
#   bench/gpu_session.sh serve   OUT WHEELS  `sida serve` end to end on the GPU: time to ready and `sida bench http`
#                                                 for the zoo model (torch-bf16, then compile) and ddpmpp-cifar10 (torch-bf16);
#                                                 WHEELS holds fastapi, uvicorn, pydantic(-settings) and their needs
#                                                 (the list and its size: docs/benchmarks.md)
#   bench/gpu_session.sh serve-sweep OUT WHEELS  the [serve-gpu] sweep: the zoo model and ddpmpp-cifar10 on the compile
#                                                 backend (reduce-overhead): latency at n=1, closed loop at n=16 (npy and PNG),
#                                                 open loop at RATES with deadlines, py-spy of the server under load, and the
#                                                 generator alone (`sida bench generate`) in the same run for the ratio
#   bench/gpu_session.sh serve-sweep2 OUT WHEELS  after the hot-path changes: ddpmpp (cold and warm start, the sweep, the
#                                                 generator alone, then `--workers 3`); the serve stages' WHEELS (6.6 MB):
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 \
#           --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .whl fastapi starlette pydantic pydantic-core \
#           pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions uvicorn httptools \
#           opentelemetry-api py-spy==0.4.3 aiohttp yarl multidict frozenlist propcache aiosignal aiohappyeyeballs attrs
#   bench/gpu_session.sh serve-short OUT WHEELS   a 4-minute cut of serve-sweep2 (zoo: one process, then 4 workers; the default compile)
#   bench/gpu_session.sh serve-open OUT WHEELS  the open-loop targets: each model on one process, its saturation (closed loop,
#                                                 n=16 npy), then Poisson load at 50/80/130% of it; the zoo model on 4 workers
#                                                 (END_S=575: the second its last step, the generator alone, must end by)
#   bench/gpu_session.sh serve-sd OUT WHEELS SD_WHEELS  preset:sd15-512 served (compile, buckets 1, 8, 16): n=1, n=4 with JPEG
#                                                 and PNG responses, and the generator alone (SD_WHEELS: build/sd-whl)
#   bench/gpu_session.sh startup OUT WHEELS  cold (side-by-side compile) and warm start of `sida serve --backend compile` with
#                                                 its defaults (MODE=... pins a mode; MODELS=ddpmpp: one model), then
#                                                 each generator alone at the server's buckets
#   bench/gpu_session.sh startup-profile OUT WHEELS  ddpmpp's warm start of `sida serve --backend compile` under py-spy (after a
#                                                 cold start fills the cache) and torch.profiler of its default compile
#                                                 at batch 1 and 256 beside eager fp32
#   bench/gpu_session.sh kernels OUT     the generated code (TORCH_LOGS=output_code) of ddpmpp's default compile at batch 256,
#                                                 with its profile
#   bench/gpu_session.sh speed   OUT     compile speed candidates (freezing, channels-last, mode; bf16 at batch 1, 64, 256,
#                                                 each row with the parity gate) for ddpmpp-cifar10 and the zoo model, a
#                                                 profile of the best, cold/warm start with the persisted compile cache;
#                                                 all in OUT/speed.tgz (env: VARIANTS, ZOO_VARIANTS, PREWARM_S, BUDGET_S,
#                                                 AUTOTUNE_EXPORTS; STARTS=0 skips the start rows, EAGER the eager
#                                                 row (torch-fp32: the 3x target's baseline; none: no eager row), TABLE_S its time, PROFILE=V1,.. the profiled variants,
#                                                 OUTPUT_CODE=V1,.. logs those variants' generated kernels; SPEED_BATCHES
#                                                 the table's batches (1,64,256);
#                                                 PREWARM_RESERVE, TABLE_RESERVE, PROFILE_RESERVE: seconds each step
#                                                 leaves to the later ones, for a BUDGET_S other than 560)
#   bench/gpu_session.sh autotune OUT    the one-time max-autotune `sida export compile` of both models, its compiled code in
#                                                 OUT/autotune-exports.tgz; carry that file into a later call and run
#       AUTOTUNE_EXPORTS=build/autotune-exports.tgz bench/gpu_session.sh speed OUT   (max-autotune rows, loaded, not tuned)
#   bench/gpu_session.sh triton  OUT CARRY  `sida serve --triton` beside the FastAPI path on the same GPU, ddpmpp-cifar10 on
#                                                 compile (reduce-overhead): latency at n=1, closed loop at n=16 (npy), open loop;
#                                                 CARRY holds tsite.tar.xz (nvidia-pytriton 0.7.0 + numpy 1.26.4 for cp312,
#                                                 trimmed) and the server wheels, both made by bench/triton_carry.sh
#   bench/gpu_session.sh classifier OUT CARRY  a stronger FD-CIFAR feature network (width x epochs candidates; the
#                                                 smallest with >= 90% test accuracy is kept in OUT/classifier), then the
#                                                 zoo's students evaluated in it (10k, no FID); CARRY holds
#                                                 cifar10-jpeg.tar.gz and captions.tar.gz (as for fid)
#   bench/gpu_session.sh fid     OUT CARRY  Inception FID (50k samples against the 50k training images) and FD-CIFAR of the
#                                                 zoo's students and the test split; CARRY holds cifar10-jpeg.tar.gz, one
#                                                 Inception copy gzipped (`sida bench fid-weights`: inception-fp16.pt.gz or
#                                                 inception-int8.pt.gz) and captions.tar.gz (`sida train captions`); sida.json
#                                                 (with --record's metrics) and eval.json come back in OUT
#   bench/gpu_session.sh quality-teacher OUT DATA  [quality]'s class chain, one warm machine, three calls: a stronger
#                                                 FD-CIFAR classifier (CANDIDATES WIDTH:EPOCHS), then a teacher with CUDA
#                                                 graphs (INIT_FROM=BUNDLE continues one; LABEL_DROPOUT=P makes it
#                                                 guidable); state in build/quality (COND=text: build/quality-text)
#   bench/gpu_session.sh quality-student OUT DATA  SiDA from that teacher (TEACHER=, CLASSIFIER= override the chain's;
#                                                 RESUME=1 continues the last call's student on the same warm machine;
#                                                 GUIDANCE=K guides a teacher trained with label dropout;
#                                                 CONTINUE=BUNDLE starts the generator from a student, a warm restart
#                                                 that carries a student on across sessions; the last call's student
#                                                 on this machine: CONTINUE=$Q/student-run.old/bundle (Q: build/quality,
#                                                 COND=text: build/quality-text), as a fresh run moves student-run aside)
#   bench/gpu_session.sh quality-guidance OUT DATA  students at each scale of GUIDANCES ("1 1.2") side by side on the
#                                                 one GPU, eager, quality-student's settings (TEACHER=, CLASSIFIER=,
#                                                 CONTINUE= as there): what guidance costs in FID and buys in class accuracy
#   bench/gpu_session.sh quality-eval OUT DATA INCEPTION_GZ  FID (50k) and FD-CIFAR: test split, the teacher at 35 and
#                                                 17 NFE (NFE17=0: 35 only), the student (STUDENTS="NAME=BUNDLE ...":
#                                                 these instead); --record into copies whose sida.json come back
#   bench/gpu_session.sh quality-continue OUT DATA  TEACHER=BUNDLE CLASSIFIER=FILE: the teacher evaluated (FD-CIFAR,
#                                                 class dependence), continued by a warm restart, evaluated again
#       FID's carry: the fp16 Inception (40 MB gzipped) and the data (20 MB) fill one 64 MiB transfer, so the call with
#       FID carries only those two, every zoo weight and bench/results left behind (`bench/device_tree.sh leave
#       $(git ls-files 'models/zoo/*.safetensors' 'models/zoo/*.pt' bench/results)`), and reads the teacher, student
#       and classifier that earlier calls left on the same warm machine. The 2026-12-07 chain (results/.../
#       2026-12-07-quality-fid): call 1 `mkdir -p build/keep && cp models/zoo/fd-cifar-classifier/classifier.pt
#       build/keep/ && TEACHER=models/zoo/cifar10-cond-teacher CLASSIFIER=build/keep/classifier.pt quality-continue`
#       (carry the data; the students left behind), then at once call 2: quality-student, then quality-eval, with
#       TEACHER=build/quality/chain/run/bundle CLASSIFIER=build/keep/classifier.pt and END_S splitting the 10 minutes
#       A carried folder stays on the warm machine for later calls that do not name it, so a chain splits what it needs
#       over its calls. The text chain with the class FIDs (2026-12-07, results/.../2026-12-07-quality-text): with every
#       zoo weight and bench/results left behind (`bench/device_tree.sh leave $(git ls-files 'models/zoo/*.safetensors'
#       'models/zoo/*.pt') $(git ls-files bench/results)`), build/keep = the class teacher + the classifier, build/keep2 =
#       cifar10-cond, build/q-cap = captions.tar.gz alone; call 1 (carry build/q-data build/q-cap build/keep, 56 MB)
#       `COND=text CAPTIONS=build/q-cap/captions.tar.gz LABEL_DROPOUT=0.1 CANDIDATES= END_S=480 quality-teacher OUT
#       build/q-data/cifar10-jpeg.tar.gz`; call 2 (no carry) `COND=text CAPTIONS=build/q-cap/captions.tar.gz GUIDANCE=1.5
#       CLASSIFIER=build/keep/classifier.pt END_S=440 quality-student OUT build/q-data/cifar10-jpeg.tar.gz`; call 3
#       (carry build/q-inc build/keep2, 57 MB) `NFE17=0 END_S=500 STUDENT=build/keep2/cifar10-cond
#       TEACHER=build/keep/cifar10-cond-teacher CLASSIFIER=build/keep/classifier.pt quality-eval OUT
#       build/q-data/cifar10-jpeg.tar.gz build/q-inc/inception-fp16.pt.gz`; call 4 (no carry) the same with `COND=text
#       CAPTIONS=build/q-cap/captions.tar.gz NFE17=0 END_S=315 CLASSIFIER=build/keep/classifier.pt` and no
#       TEACHER/STUDENT (the chain's own, calls 1 and 2).
#       Planned next (what guidance costs in FID, class; same leave and build/ folders): call 1 (carry build/q-data
#       build/keep, 52 MB) `TEACHER=build/keep/cifar10-cond-teacher CLASSIFIER=build/keep/classifier.pt GUIDANCES='1 1.2'
#       END_S=480 quality-guidance OUT build/q-data/cifar10-jpeg.tar.gz`; call 2 (carry build/q-inc) `NFE17=0
#       TEACHER=build/keep/cifar10-cond-teacher CLASSIFIER=build/keep/classifier.pt END_S=560
#       STUDENTS='g1=build/quality/guidance/g1/bundle g1.2=build/quality/guidance/g1.2/bundle'
#       quality-eval OUT build/q-data/cifar10-jpeg.tar.gz build/q-inc/inception-fp16.pt.gz`; call 3 (no carry)
#       `COMPILE='--compile reduce-overhead' CONTINUE=build/quality/guidance/gBEST/bundle TEACHER=... CLASSIFIER=...
#       GUIDANCE=BEST END_S=560 quality-student OUT build/q-data/cifar10-jpeg.tar.gz` (cold compile, eager fallback);
#       call 4 the same with RESUME=1 (its graphs from build/compile-cache: compiled speed from the start). The text
#       teacher of 2026-12-07 (not in the repository) is kept on the workstation in build/text-teacher-2 (15 MB;
#       INIT_FROM= continues it).
#   bench/gpu_session.sh ddp1    OUT     SiD with CUDA graphs as one plain process and under torchrun with one (DDP):
#                                                 the multi-GPU code path on one GPU, and its overhead
#   bench/gpu_session.sh ratio   OUT     one-step student against the 35-NFE Heun teacher per image (ddpmpp-cifar10 as
#                                                 both), compiled and eager, batch 64 (BACKENDS=compile: compiled only)
#   bench/gpu_session.sh sd      OUT WHEELS  SD-1.5-shaped one-step generation (512 px): the generator, then its UNet and
#                                                 VAE decoder apart, at BATCHES (1,16); SD_VARIANTS=V1,.. compile variants and
#                                                 SD_BACKENDS (torch-bf16,compile-bf16) pick the rows; TRAIN=1 adds SiD-LSG training speed;
#                                                 random weights; WHEELS holds diffusers (absent on the GPU machine), made here by
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#           --platform manylinux_2_28_x86_64 -d carry/whl diffusers==0.42.1 importlib_metadata
#   bench/gpu_session.sh soak    OUT WHEELS  `sida bench soak`: the zoo's CIFAR-10 model served by compile-bf16 under
#                                                 moderate load, RSS and GPU memory sampled (MINUTES=8: with the server's
#                                                 start and compile it fits the 10-minute call); WHEELS holds the server stack
#       pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#           -d carry/srv fastapi uvicorn pydantic-settings prometheus-client httpx python-multipart
#
# The working tree with the zoo's weights (71 MB) is larger than one call's 64 MiB transfer: before a call, leave
# behind what its stage does not read (`bench/device_tree.sh leave [PATH...]`; no PATH: all the zoo's weights), check
# with `bench/device_tree.sh size CARRIED...`, and `bench/device_tree.sh restore` once the call has returned.
#
# Everything is written under OUT (logs, result JSON/PNG, bundles). The machine is bare: python3 with torch,
# numpy 2 and no fastapi, so everything runs as `python3 -m sida.cli`.
set -uo pipefail
STAGE=${1:?stage}; OUT=${2:?out dir}
export PYTHONUNBUFFERED=1
# The lent machine's torch, sympy and networkx come without compiled bytecode (py-spy of a warm `sida serve` start,
# 2026-12-06: 6.4 s of 22 s went to compiling their sources, at every start). An installed image has it (pip writes
# it); here the first process writes it under this prefix and every later one reads it.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
SIDA=(python3 -m sida.cli)
mkdir -p "$OUT"
ARCH=(--preset ddpmpp --model-channels 64 --channel-mult 1,2,2 --num-blocks 2 --attn 16 --dropout 0.05)

with_wheels() {   # DIR...: the wheels in these folders installed under /tmp/site (the machine is bare), importable
                  # with this checkout; --upgrade: a second stage in the same call reinstalls without warnings
    local d wheels=(); for d in "$@"; do wheels+=("$d"/*.whl); done
    python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site "${wheels[@]}" \
        && export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
}

# One server at a time: seconds from launch to /readyz 200, then closed-loop load at n=1 and n=16 per request
# (and open-loop Poisson load at RATES requests/s when RATES is set, e.g. RATES=50,200,800).
serve_and_load() {   # NAME BUNDLE BACKEND READY_LIMIT_S [sida serve options...]; LEVELS, NS, DURATION, RATES shape the load
                     # (HTTP_ARGS: more `sida bench http` options, e.g. --format npy --response binary)
    local name=$1 bundle=$2 backend=$3 limit=$4 port=8100 start=$SECONDS; shift 4
    "${SIDA[@]}" serve --bundle "$bundle" --backend "$backend" --port $port --no-ui --max-batch 64 "$@" \
        > "$OUT/server-$name.log" 2>&1 &
    local pid=$!
    until curl -sf localhost:$port/readyz > /dev/null; do
        if ! kill -0 $pid 2>/dev/null || [ $((SECONDS - start)) -ge "$limit" ]; then
            echo "$name: not ready after $((SECONDS - start)) s" | tee -a "$OUT/ready.txt"; kill $pid 2>/dev/null; wait $pid; return; fi
        sleep 0.5
    done
    echo "$name: ready after $((SECONDS - start)) s" | tee -a "$OUT/ready.txt"
    [[ $backend = compile* ]] && all_warm "$name" "$OUT/server-$name.log" $start $((limit + 120))
    for n in ${NS:-1 16}; do
        timeout 120 "${SIDA[@]}" bench http --url http://127.0.0.1:$port --concurrency ${LEVELS:-1,8,32,128} --n $n \
            --duration ${DURATION:-6} ${RATES:+--rate $RATES} ${HTTP_ARGS:-} \
            --out $RES --name "http-$name-n$n"
    done
    curl -s localhost:$port/metrics | grep -E '^sida_batch_size|^sida_request' > "$OUT/metrics-$name.txt"
    kill -INT $pid; wait $pid
}

all_warm() {   # NAME SERVER_LOG START LIMIT_S [WORKERS]: a compile server is ready after its first bucket; wait for the
               # others (every worker's: /readyz answers once the first worker is ready, 2026-12-07)
    until [ "$(grep -c '"event": "warm"' "$2")" -ge "${5:-1}" ]; do      # each worker's last line (after any warm_failed)
        [ $((SECONDS - $3)) -ge "$4" ] && { echo "$1: buckets not all warm after $((SECONDS - $3)) s" | tee -a "$OUT/ready.txt"; return; }
        sleep 0.5
    done
    if grep -q '"event": "warm_failed"' "$2"; then echo "$1: warm-up of a bucket FAILED after $((SECONDS - $3)) s (log)"
    else echo "$1: every bucket${5:+ of $5 worker(s)} warm after $((SECONDS - $3)) s"; fi | tee -a "$OUT/ready.txt"
}

ready_timings() {   # SERVER_LOG...: each server's ready and warm lines (seconds since its process started, load, warm-up
                    # per bucket: the ready line has the first bucket, the warm line all of them)
    for log in "$@"; do
        grep -hE '"event": "(ready|warm)' "$log" | python3 -c 'import json, sys
for line in sys.stdin:
    event = json.loads(line[line.index("{"):])
    print(sys.argv[1], json.dumps({k: event.get(k) for k in ("event", "process_seconds", "after_ready_seconds", "startup", "error")}))' \
            "$(basename "$log")" | tee -a "$OUT/ready.txt"
    done
}

# serve-sweep's pieces: one server up (time to ready), loads against it, then down (its /metrics kept).
server_up() {   # NAME BUNDLE LIMIT_S [sida serve options...]: sets SERVER_PID; returns 1 if not ready in time
    local name=$1 bundle=$2 limit=$3 start=$SECONDS; shift 3
    "${SIDA[@]}" serve --bundle "$bundle" --port 8100 --no-ui "$@" > "$OUT/server-$name.log" 2>&1 &
    SERVER_PID=$!
    until curl -sf localhost:8100/readyz > /dev/null; do
        if ! kill -0 $SERVER_PID 2>/dev/null || [ $((SECONDS - start)) -ge "$limit" ]; then
            echo "$name: not ready after $((SECONDS - start)) s" | tee -a "$OUT/ready.txt"; kill $SERVER_PID 2>/dev/null; wait $SERVER_PID
            return 1; fi
        sleep 0.5
    done
    echo "$name: ready after $((SECONDS - start)) s" | tee -a "$OUT/ready.txt"
    local workers=1; [[ " $* " =~ " --workers "([0-9]+) ]] && workers=${BASH_REMATCH[1]}
    [[ " $* " = *" --backend compile"* ]] && all_warm "$name" "$OUT/server-$name.log" $start $((limit + 120)) $workers
    return 0
}
load() {        # NAME [sida bench http options...]; CLIENT_PROCS client processes (4)
    local name=$1; shift
    timeout 150 "${SIDA[@]}" bench http --url http://127.0.0.1:8100 --client-processes ${CLIENT_PROCS:-4} --out "$RES" \
        --name "$name" "$@" 2>&1 | tail -n 12
}
server_down() { # NAME
    curl -s localhost:8100/metrics | grep -E '^sida_(batch_size|request|images)' > "$OUT/metrics-$1.txt"
    kill -INT $SERVER_PID; wait $SERVER_PID
}
sweep() {       # NAME RATES: latency at n=1, closed loop at n=16 (npy, then PNG), open loop at RATES (npy, deadline 1 s)
    local name=$1 rates=$2
    load "http-$name-n1" --concurrency 1 --n 1 --duration 5 --warmup-requests 20
    (sleep 3; timeout 12 py-spy record --nonblocking -d 8 -f speedscope -o "$OUT/pyspy-$name.json" --pid $SERVER_PID \
        > "$OUT/pyspy-$name.log" 2>&1) &
    load "http-$name-n16-npy" --concurrency 1,8,32,64 --n 16 --format npy --response binary --duration 4
    load "http-$name-n16-png" --concurrency 8,32 --n 16 --duration 4
    load "http-$name-open" --rate "$rates" --n 16 --format npy --response binary --duration 4 --deadline-ms 1000
}

# The zoo's students through `sida train evaluate` with the options in EVAL (one call per model, --record into copies
# whose sida.json comes back in OUT); CAPTIONS: the folder of `sida train captions` for the text model. Models absent
# from the working tree (left behind to fit the carry) are skipped.
evaluate_zoo() {
    if [ -f models/zoo/cifar10-cond/generator.safetensors ]; then
        cp -r models/zoo/cifar10-cond /tmp/
        timeout 280 "${SIDA[@]}" train evaluate "${EVAL[@]}" --student cifar10-cond=/tmp/cifar10-cond --out "$OUT/eval-class" \
            2>&1 | grep -v 'it/s\]\|img/s\]' | tee "$OUT/eval-class.log"
        cp /tmp/cifar10-cond/sida.json "$OUT/cifar10-cond.sida.json"
    fi
    if [ -f models/zoo/cifar10-text/generator.safetensors ] && [ -d "$CAPTIONS" ]; then
        cp -r models/zoo/cifar10-text /tmp/
        timeout $((590 - SECONDS)) "${SIDA[@]}" train evaluate "${EVAL[@]}" --test-prefix '' --student cifar10-text=/tmp/cifar10-text \
            --captions "$CAPTIONS/captions.json" --text-embeddings "$CAPTIONS/text-embeddings.safetensors" \
            --out "$OUT/eval-text" 2>&1 | grep -v 'it/s\]\|img/s\]' | tee "$OUT/eval-text.log"
        cp /tmp/cifar10-text/sida.json "$OUT/cifar10-text.sida.json"
    fi
}

smallest_accurate() {   # DIR PATTERN: the folder (DIR/PATTERN) of the smallest classifier, by parameters, whose test
                        # accuracy is at least MIN_ACCURACY (0.90); nothing when none is
    python3 - "$1" "$2" "${MIN_ACCURACY:-0.90}" <<'EOF2'
import json, pathlib, sys
runs = [(json.loads(p.read_text()), str(p.parent)) for p in pathlib.Path(sys.argv[1]).glob(sys.argv[2] + '/classifier.json')]
good = [(info['parameters'], d) for info, d in runs if info['test_accuracy'] >= float(sys.argv[3])]
print(min(good)[1] if good else '')
EOF2
}

left() {   # MARGIN [CAP]: the seconds to END minus MARGIN (at most CAP), and at least 1: `timeout 0` and a
           # --time-limit of 0 both mean "no limit", which a call that must end by END cannot have
    local s=$((END - SECONDS - $1)); [ -n "${2:-}" ] && [ "$s" -gt "$2" ] && s=$2
    echo $((s > 0 ? s : 1))
}

fresh_run() {   # RUN_DIR: a new run starts there; the last call's (bundle, log) moves to RUN_DIR.old, so nothing of it
                # passes for this run's
    rm -rf "$1.old"; [ -d "$1" ] && mv "$1" "$1.old"; true
}

train_with_fallback() {   # RUN_DIR LOG_PREFIX COMMAND...: COMMAND with CUDA graphs (COMPILE= turns them off) to 60 s
                          # before END; if a compiled run leaves no bundle and 150 s remain, eager for the time left
    local run=$1 logs=$2; shift 2
    if [ $((END - SECONDS)) -lt 120 ]; then echo "no time left to train ($((END - SECONDS)) s)" | tee -a "$(dirname $logs)/machine.txt"; return; fi
    timeout $(left 15) "${SIDA[@]}" "$@" ${COMPILE---compile reduce-overhead} --out $run --time-limit $(left 75)s \
        > $logs.log 2>&1
    local rc=$? mode=${COMPILE-compiled}
    echo "$(basename $logs) (${mode:-eager}): exit $rc at $SECONDS s" | tee -a "$(dirname $logs)/machine.txt"
    if [ -n "${COMPILE---compile}" ] && [ -z "${RESUME:-}" ] && [ ! -f $run/bundle/generator.safetensors ] \
            && [ $((END - SECONDS)) -gt 150 ]; then
        rm -rf $run
        timeout $(left 15) "${SIDA[@]}" "$@" --out $run --time-limit $(left 60)s > $logs-eager.log 2>&1
        echo "$(basename $logs) (eager): exit $? at $SECONDS s" | tee -a "$(dirname $logs)/machine.txt"
    fi
}

student_command() {   # GUIDANCE: STUDENT, the zoo's SiDA student of teacher T (short schedule, FD-CIFAR in C's space)
    STUDENT=(train distill --method sida --teacher "$T" "${TEXT_ARGS[@]}" --data "$DATA" --data-prefix train --images 20M
             --batch 256 --lr 2e-5 --g-warmup 20k --gan-start 40k --save-dtype fp16 --channels-last --tf32 --log-every 10k
             --sample-every 5M --checkpoint-every 50M --metric-features classifier:$C --metric-every 40k --metric-samples 5k
             --guidance $1 ${CONTINUE:+--generator $CONTINUE})
}

quality_classifier() {   # C: CLASSIFIER when given (it must exist), else the chain's, else the zoo's
    if [ -n "${CLASSIFIER:-}" ]; then
        C=$CLASSIFIER; [ -f "$C" ] || { echo "CLASSIFIER=$C: no such file" >&2; exit 2; }
    else
        C=$Q/classifier/classifier.pt; [ -f "$C" ] || C=models/zoo/fd-cifar-classifier/classifier.pt
        [ -f "$C" ] || { echo "no classifier: $Q/classifier has none and the zoo's was left behind" >&2; exit 2; }
    fi
}

# The quality-* stages' condition: class (default), or COND=text with CAPTIONS (the folder `sida train captions`
# writes, or its .tar.gz); sets Q (the chain's state: build/quality, build/quality-text), COND_ARGS (the teacher's),
# TEXT_ARGS (captions and their embeddings, for every command) and TEST_ARGS (text models have no test-split floor).
quality_condition() {
    # Compiled runs (COMPILE=...) keep inductor's caches in the working tree, which stays on the warm machine between
    # calls: a later call's run loads the graphs an earlier one compiled (a tiny SiDA run on 2 CPU cores, 2026-12-08:
    # 13 graphs, 448 s cold, 48 s warm).
    export SIDA_CACHE_DIR=${SIDA_CACHE_DIR:-$PWD/build/compile-cache}
    COND_ARGS=(--cond "${COND:-class}"); TEXT_ARGS=(); TEST_ARGS=(); Q=build/quality
    if [ "${COND:-class}" = text ]; then
        local c=${CAPTIONS:?COND=text needs CAPTIONS}
        if [ -f "$c" ]; then
            mkdir -p /tmp/captions && tar xzf "$c" -C /tmp/captions || { echo "CAPTIONS=$c: cannot unpack" >&2; exit 2; }
            c=$(dirname "$(find /tmp/captions -name captions.json | head -n 1)"); fi
        TEXT_ARGS=(--captions "$c/captions.json" --text-embeddings "$c/text-embeddings.safetensors")
        TEST_ARGS=(--test-prefix ''); Q=build/quality-text
    fi
}

case $STAGE in
bench)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)'
    RES=/tmp/results
    # Where the time of one eager bf16 channels-last SiD iteration goes (DDPM++ CIFAR-10, batch 128).
    timeout 60 python3 - <<'EOF' 2>&1 | tee "$OUT/profile-bf16-cl.txt"
import torch
from models.architecture import ddpmpp
from bench.train_throughput import build_distiller
d = build_distiller(ddpmpp(label_dim=10), 'sid', 'bf16', False, True, 128, 'cuda')
for _ in range(3):
    d.iteration()
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(2):
        d.iteration()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=30, max_name_column_width=60))
EOF
    timeout 100 "${SIDA[@]}" bench train --variants fp32,bf16,bf16-cl --batch 128 --iters 10 --out $RES --name train-eager
    # Compiling the three networks takes about 200 s on the H200 (the first iterations; reported as warmup_s).
    timeout $((585 - SECONDS)) "${SIDA[@]}" bench train --variants bf16-compile --batch 128 --iters 10 --out $RES --name train-compile
    tar czf "$OUT/results.tgz" -C $RES .
    ;;
variants)
    NAME=${3:?name}; VARIANTS=${4:?variants}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    if [ -n "${TEACHER:-}" ]; then
        # Meanwhile, the real trainer end to end with CUDA graphs (data-free SiD from that teacher bundle), off the GPU
        # before the variants are timed; SIGTERM at 280 s at the latest (it checkpoints and writes its bundle).
        timeout 280 "${SIDA[@]}" train distill --method sid --teacher "$TEACHER" --out /tmp/cg-run --compile reduce-overhead \
            --batch 128 --images 5M --time-limit 200s --log-every 10k --sample-every 100k --checkpoint-every 200k \
            --save-dtype fp16 > "$OUT/trainer-cg.log" 2>&1 &
        TRAINER=$!
    fi
    timeout $((590 - SECONDS)) python -m bench.train_variants "$OUT" "$NAME" "$VARIANTS" --profile "${PROFILE:-}" \
        --deadline "${DEADLINE:-440}" --start-timing-after "${TIMING_AFTER:-0}" 2>&1 | tee "$OUT/variants.log"
    if [ -n "${TEACHER:-}" ]; then
        wait $TRAINER; echo "trainer exit $?" >> "$OUT/trainer-cg.log"
        cp /tmp/cg-run/log.jsonl /tmp/cg-run/config.json "$OUT/" 2>/dev/null
        ls -R /tmp/cg-run > "$OUT/trainer-cg-files.txt" 2>&1
        cp /tmp/cg-run/samples/*.png "$OUT/" 2>/dev/null; true
    fi
    ;;
teacher)
    DATA=${3:?data}
    "${SIDA[@]}" train teacher "${ARCH[@]}" --cond class --data "$DATA" --data-prefix train --out /tmp/teacher \
        --images 200M --time-limit "${TIME_LIMIT:-500s}" --batch 512 --lr 1e-3 --lr-rampup 200k --ema 250k \
        --save-dtype fp16 --channels-last --tf32 --log-every 100k --sample-every 5M --checkpoint-every 50M
    cp -r /tmp/teacher/bundle "$OUT/teacher-bundle"
    cp /tmp/teacher/log.jsonl "$OUT/teacher-bundle/train-log.jsonl"
    ;;
student)
    DATA=${3:?data}; TEACHER=${4:?teacher bundle}; METHOD=${METHOD:-sida}
    # SiDA's short-run schedule: warm-up 20k and adversarial start 40k images instead of the method's 100k/200k, so a
    # run of a few minutes sees the whole method. SiD (METHOD=sid, data-free; --data only feeds labels and the metric)
    # has no warm-up. Everything else is the zoo's student recipe.
    SCHEDULE=(--g-warmup 20k --gan-start 40k); [ "$METHOD" = sid ] && SCHEDULE=()
    "${SIDA[@]}" train distill --method "$METHOD" --teacher "$TEACHER" --data "$DATA" --data-prefix train --out /tmp/student \
        --images 20M --time-limit "${TIME_LIMIT:-420s}" --batch 256 --lr 2e-5 "${SCHEDULE[@]}" \
        --save-dtype fp16 --channels-last --tf32 --log-every 10k --sample-every 5M --checkpoint-every 50M \
        --metric-features classifier:models/zoo/fd-cifar-classifier/classifier.pt --metric-every 20k --metric-samples 5k
    cp -r /tmp/student/bundle "$OUT/student-bundle"
    cp /tmp/student/log.jsonl /tmp/student/config.json "$OUT/"
    "${SIDA[@]}" train evaluate --data "$DATA" --classifier models/zoo/fd-cifar-classifier/classifier.pt --samples 10k \
        --teacher "teacher=$TEACHER" --teacher-steps 18,9 --student "$METHOD=$OUT/student-bundle" \
        --student "SiDA-zoo=models/zoo/cifar10-cond" --curves "$METHOD=/tmp/student" --out "$OUT/eval"
    ;;
serve)
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    RES=$OUT/results      # straight into OUT: a stage cut off by the time limit still brings back what it measured
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    serve_and_load zoo-torch-bf16 models/zoo/cifar10-cond torch-bf16 120
    serve_and_load ddpmpp-torch-bf16 build/bench-bundles/ddpmpp-cifar10 torch-bf16 120
    serve_and_load zoo-compile models/zoo/cifar10-cond compile $((560 - SECONDS))
    ;;
serve-sweep)
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    export PATH=/tmp/site/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    RES=$OUT/results
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    OPTS=(--backend compile --compile-mode reduce-overhead --max-batch 128 --max-queue-images 4096)
    GEN=(bench generate --backends compile-bf16 --compile-mode reduce-overhead --batch 1,16,64,128 --runs 30 --max-seconds 4 --out "$RES")
    if server_up zoo-h11 models/zoo/cifar10-cond 200 "${OPTS[@]}"; then
        sweep zoo-h11 100,300,600,1000; server_down zoo-h11; fi
    timeout 120 "${SIDA[@]}" "${GEN[@]}" --bundle models/zoo/cifar10-cond --name generate-zoo 2>&1 | tail -n 8
    if server_up ddpmpp-h11 build/bench-bundles/ddpmpp-cifar10 240 "${OPTS[@]}"; then
        sweep ddpmpp-h11 50,150,300,500; server_down ddpmpp-h11; fi
    timeout 120 "${SIDA[@]}" "${GEN[@]}" --bundle build/bench-bundles/ddpmpp-cifar10 --name generate-ddpmpp 2>&1 | tail -n 8
    if [ $SECONDS -lt 480 ] && SIDA_HTTP_PARSER=httptools server_up zoo-httptools models/zoo/cifar10-cond 60 "${OPTS[@]}"; then
        load http-zoo-httptools-n1 --concurrency 1 --n 1 --duration 4 --warmup-requests 20
        load http-zoo-httptools-n16-npy --concurrency 32,64 --n 16 --format npy --response binary --duration 4
        server_down zoo-httptools; fi
    echo "stage took $SECONDS s"
    ;;
serve-sweep2)
    # After the hot-path changes and with buckets that follow --max-batch (1,8,64,128): ddpmpp on one process (cold
    # start, the sweep, then a warm restart), the generator alone in the same run, then three workers (httptools).
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    export PATH=/tmp/site/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    RES=$OUT/results
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    OPTS=(--backend compile --compile-mode reduce-overhead --max-batch 128 --max-queue-images 4096)
    GEN=(bench generate --backends compile-bf16 --compile-mode reduce-overhead --batch 1,16,64,128 --runs 30 --max-seconds 4 --out "$RES")
    if server_up ddpmpp-cold build/bench-bundles/ddpmpp-cifar10 240 "${OPTS[@]}"; then
        sweep ddpmpp-1proc 150,300,450; server_down ddpmpp-cold; fi
    if server_up ddpmpp-warm build/bench-bundles/ddpmpp-cifar10 90 "${OPTS[@]}"; then
        load http-ddpmpp-warm-n1 --concurrency 1 --n 1 --duration 3 --warmup-requests 20; server_down ddpmpp-warm; fi
    timeout 120 "${SIDA[@]}" "${GEN[@]}" --bundle build/bench-bundles/ddpmpp-cifar10 --name generate-ddpmpp 2>&1 | tail -n 8
    if SIDA_HTTP_PARSER=httptools server_up ddpmpp-3workers build/bench-bundles/ddpmpp-cifar10 $((590 - SECONDS - 45)) \
            "${OPTS[@]}" --workers 3; then
        load http-ddpmpp-3workers-n16-npy --concurrency 32,64,128 --n 16 --format npy --response binary --duration 4
        load http-ddpmpp-3workers-open --rate 300,450,600 --n 16 --format npy --response binary --duration 4 --deadline-ms 1000
        server_down ddpmpp-3workers; fi
    echo "stage took $SECONDS s"
    ;;
serve-short)
    # The short version (about 4 minutes): the zoo model on one process, then on four workers, n=16 npy.
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    RES=$OUT/results
    OPTS=(--backend compile --max-batch 128 --max-queue-images 4096)     # the default compile (whole-graph)
    if server_up zoo-1proc models/zoo/cifar10-cond 130 "${OPTS[@]}"; then
        load http-zoo-1proc-n1 --concurrency 1 --n 1 --duration 4 --warmup-requests 20
        load http-zoo-1proc-n16-npy --concurrency 32,64 --n 16 --format npy --response binary --duration 4
        server_down zoo-1proc; fi
    if SIDA_HTTP_PARSER=httptools server_up zoo-4workers models/zoo/cifar10-cond 70 "${OPTS[@]}" --workers 4; then
        load http-zoo-4workers-n16-npy --concurrency 64,128 --n 16 --format npy --response binary --duration 4
        load http-zoo-4workers-open --rate 700,1000 --n 16 --format npy --response binary --duration 4 --deadline-ms 1000
        server_down zoo-4workers; fi
    echo "stage took $SECONDS s"
    ;;
serve-open)
    # [serve-gpu]'s open-loop targets on one process per model (the default compile; pipelined batches; start-up
    # objects frozen out of the garbage collector): saturation from a closed loop at n=16, then Poisson arrivals at
    # 50%, 80% and 130% of it (npy, deadline 1 s); then the zoo model on four workers (loading side by side on the warm
    # cache) under the same open loop; the zoo generator alone last (the ratio for its efficiency).
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    RES=$OUT/results
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    declare -A BUNDLE=([zoo]=models/zoo/cifar10-cond [ddpmpp]=build/bench-bundles/ddpmpp-cifar10)
    OPTS=(--backend compile --max-batch 128 --max-queue-images 4096 ${LAG_MS:+--max-loop-lag-ms $LAG_MS})   # LAG_MS: shedding
    NPY=(--n 16 --format npy --response binary)
    rates() {   # NAME: 50%, 80% and 130% of the requests/s that closed-loop run NAME reached (its best level)
        python3 - "$RES" "$1" <<'EOF2'
import glob, json, sys
rows = [r for f in glob.glob(f'{sys.argv[1]}/*/*-{sys.argv[2]}.json') for r in json.load(open(f))['results']]
best = max(r['images_per_s'] for r in rows) / 16
print(','.join(str(round(best * share)) for share in (0.5, 0.8, 1.3)))
EOF2
    }
    for m in ${MODELS:-zoo ddpmpp}; do
        if server_up $m-1proc ${BUNDLE[$m]} 150 "${OPTS[@]}"; then
            load http-$m-1proc-n1 --concurrency 1 --n 1 --format npy --response binary --duration 4 --warmup-requests 20
            load http-$m-1proc-n16 --concurrency 16,32 "${NPY[@]}" --duration 5
            R=$(rates http-$m-1proc-n16); echo "$m open-loop rates: $R req/s" | tee -a "$OUT/ready.txt"
            [ -n "$R" ] && load http-$m-1proc-open --rate "$R" "${NPY[@]}" --duration 5 --deadline-ms 1000
            server_down $m-1proc; fi
    done
    if SIDA_HTTP_PARSER=httptools server_up zoo-4workers models/zoo/cifar10-cond 90 "${OPTS[@]}" --workers 4; then
        ready_timings "$OUT/server-zoo-4workers.log"
        load http-zoo-4workers-n16 --concurrency 64,128 "${NPY[@]}" --duration 5
        R=$(rates http-zoo-4workers-n16); echo "zoo 4 workers open-loop rates: $R req/s" | tee -a "$OUT/ready.txt"
        [ -n "$R" ] && load http-zoo-4workers-open --rate "$R" "${NPY[@]}" --duration 5 --deadline-ms 1000
        server_down zoo-4workers; fi
    left=$((${END_S:-575} - SECONDS)); [ $left -gt 20 ] && timeout $left "${SIDA[@]}" bench generate --bundle models/zoo/cifar10-cond \
        --backends compile-bf16 --batch 1,64,128 --runs 20 --max-seconds 1 --warmup 3 --warmup-seconds 0.3 --out $RES \
        --name generate-zoo-serve-buckets 2>&1 | grep -v 'config/s'
    echo "stage took $SECONDS s"
    ;;
serve-sd)
    # [serve-gpu] at SD-1.5 shapes: preset:sd15-512 (random weights; 512x512 images through the VAE decoder) on the
    # compile backend, --max-batch 16 (buckets 1, 8, 16): n=1 latency, closed loop at n=4 with JPEG and with PNG
    # responses, then the generator alone at the same buckets (the efficiency's reference). SD_WHEELS: diffusers
    # (absent on the GPU machine; made as for the sd stage).
    WHEELS=${3:?wheels dir}; SD_WHEELS=${4:?diffusers wheels dir}
    with_wheels "$WHEELS" "$SD_WHEELS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    RES=$OUT/results
    B=$(python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:sd15-512"))' | tail -n 1)
    if server_up sd15 "$B" ${READY_S:-400} --backend compile --max-batch 16 --max-queue-images 256; then
        load http-sd15-n1-jpeg --concurrency 1 --n 1 --format jpeg --response binary --duration 5 --warmup-requests 5
        load http-sd15-n4-jpeg --concurrency 4,8 --n 4 --format jpeg --response binary --duration 6
        load http-sd15-n4-png --concurrency 4,8 --n 4 --format png --response binary --duration 6
        server_down sd15; fi
    left=$((${END_S:-575} - SECONDS)); [ $left -gt 20 ] && timeout $left "${SIDA[@]}" bench generate --bundle "$B" \
        --backends compile-bf16 --batch 1,8,16 --runs 10 --max-seconds 3 --warmup 3 --out $RES \
        --name generate-sd15-serve-buckets 2>&1 | grep -v 'config/s'
    echo "stage took $SECONDS s"
    ;;
startup)
    # Cold start (empty cache directory, no export: side-by-side compile helpers) and warm restart of `sida serve
    # --backend compile` with its defaults (MODE=... to pin a mode), latency and a short closed loop after each; then
    # each generator alone at the server's buckets (the HTTP targets compare against it).
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    for run in "bytecode written" "bytecode read"; do       # the floor of any start
        echo "import torch, CUDA up ($run):" | tee -a "$OUT/machine.txt"
        ( time python3 -c 'import torch; torch.zeros(1, device="cuda")' ) 2>&1 | tee -a "$OUT/machine.txt"
    done
    RES=$OUT/results; export SIDA_CACHE_DIR=/tmp/startup-cache; rm -rf "$SIDA_CACHE_DIR"     # cold means cold
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    declare -A BUNDLE=([zoo]=models/zoo/cifar10-cond [ddpmpp]=build/bench-bundles/ddpmpp-cifar10)
    for name in ${MODELS:-zoo ddpmpp}; do      # MODELS=ddpmpp: that one only
        bundle=${BUNDLE[$name]:?unknown model $name (MODELS: zoo, ddpmpp)}
        NS=1 LEVELS=1 DURATION=4 serve_and_load "$name-cold" "$bundle" compile 150 ${MODE:+--compile-mode $MODE}
        grep -h 'compile' "$OUT/server-$name-cold.log" | tail -n 6
        NS="1 16" LEVELS=1,8,32 DURATION=3 serve_and_load "$name-warm" "$bundle" compile 60 ${MODE:+--compile-mode $MODE}
        grep -h 'compile' "$OUT/server-$name-warm.log" | tail -n 4
        ready_timings "$OUT/server-$name-cold.log" "$OUT/server-$name-warm.log"
    done
    for name in ${MODELS:-zoo ddpmpp}; do    # the generator alone, same run
        left=$((${STAGE_S:-575} - SECONDS)); [ $left -gt 20 ] && timeout $left "${SIDA[@]}" bench generate \
            --bundle ${BUNDLE[$name]} --backends compile-bf16 --batch 1,8,64 --runs 20 --max-seconds 1 --warmup 3 \
            --warmup-seconds 0.3 --out $RES --name generate-$name-serve-buckets 2>&1 | grep -v 'config/s'
    done
    echo "stage took $SECONDS s"
    ;;
startup-profile)
    # Where a warm start goes ([serve-gpu]: ready in <= 15 s warm) and where ddpmpp's compiled step goes ([speed]): a cold
    # start of ddpmpp on the compile backend fills the cache, its warm restart runs under py-spy (--idle: waits count;
    # raw stacks) beside the ready line's own timings; then torch.profiler of the default compile at batch 1 and 256
    # beside eager fp32 (the "3x eager fp32" bar), every row through the parity gate.
    WHEELS=${3:?wheels dir}
    with_wheels "$WHEELS"
    export PATH=/tmp/site/bin:$PATH SIDA_CACHE_DIR=/tmp/startup-profile-cache; RES=$OUT/results; B=build/bench-bundles/ddpmpp-cifar10
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    NS=1 LEVELS=1 DURATION=3 serve_and_load ddpmpp-cold $B compile 150
    start=$SECONDS
    py-spy record --idle -r 100 --format raw -o "$OUT/pyspy-ddpmpp-warm.txt" -- "${SIDA[@]}" serve --bundle $B --backend compile \
        --port 8100 --no-ui --max-batch 64 > "$OUT/server-ddpmpp-warm.log" 2>&1 &
    spy=$!
    state="not ready after"
    while kill -0 $spy 2>/dev/null && [ $((SECONDS - start)) -lt 90 ]; do
        curl -sf localhost:8100/readyz > /dev/null && state="ready after" && break; sleep 0.2; done
    echo "ddpmpp-warm (under py-spy): $state $((SECONDS - start)) s" | tee -a "$OUT/ready.txt"
    kill -INT $(pgrep -P $spy) 2>/dev/null; wait $spy
    ready_timings "$OUT"/server-ddpmpp-*.log
    left=$((${STAGE_S:-560} - SECONDS)); [ $left -gt 20 ] && timeout $left "${SIDA[@]}" bench generate --bundle $B \
        --backends torch-fp32,compile-bf16 --compile-variants reduce-overhead+channels-last --batch 1,256 --runs 20 \
        --max-seconds 1 --warmup 3 --warmup-seconds 0.3 --profile "$OUT/profile" --out $RES --name profile-ddpmpp 2>&1 | grep -v 'config/s'
    echo "stage took $SECONDS s"
    ;;
kernels)
    # The generated code of ddpmpp's default compile at batch 256 (TORCH_LOGS=output_code, on an empty cache so that it
    # compiles): the source of the kernels the profile names (the [speed] profile of 2026-12-06: one pointwise kernel,
    # ..._clone_convolution_native_group_norm_silu_70, takes 9% of the step).
    export SIDA_CACHE_DIR=/tmp/kernels-cache; rm -rf "$SIDA_CACHE_DIR"
    python3 -c 'from bench.presets import resolve_bundle; resolve_bundle("preset:ddpmpp-cifar10")' > /dev/null
    TORCH_LOGS=output_code timeout ${STAGE_S:-240} "${SIDA[@]}" bench generate --bundle build/bench-bundles/ddpmpp-cifar10 \
        --backends compile-bf16 --batch 256 --runs 10 --warmup 3 --out "$OUT/results" --name kernels-ddpmpp --no-plot \
        --profile "$OUT/profile" > "$OUT/output_code.log" 2>&1
    grep -E 'img/s|parity' "$OUT/output_code.log" | tail -n 3
    gzip -f "$OUT/output_code.log"
    ;;
speed|autotune)
    # speed (one 10-minute call; every step capped by `cap`, so that the later ones still run within BUDGET_S):
    #   1. side by side, nothing timed (compiling is CPU-bound; 16 cores): the cold `sida export compile` of both models
    #      (reduce-overhead, serve's buckets 1,8,64, each on its own empty cache; contended, so upper bounds), and every
    #      table variant of both models compiled once into the shared cache
    #   2. warm start of both: `sida generate` (seconds to the first image) in a fresh process on an EMPTY cache dir
    #      (a new machine), which loads the compiled code from the bundle's export
    #   3. the tables, one process per model, one variant at a time on an idle GPU; their warm-up is a cache load now
    #   4. torch.profiler of the best ddpmpp variants (best p50 at batch 1, best img/s at batch 256)
    # autotune: the one-time max-autotune export of both models (buckets 1,64,256, compiled side by side first), packed
    # into OUT/autotune-exports.tgz; `speed` with AUTOTUNE_EXPORTS=that file adds max-autotune rows, loaded, not tuned.
    W=/tmp/speed; RES=$W/results; END=${BUDGET_S:-560}
    mkdir -p $RES $W/logs $W/profile $W/bundles
    unset TORCHINDUCTOR_CACHE_DIR; export SIDA_CACHE_DIR=$W/cache       # shared by the side-by-side compiles and the tables
    # freezing was slower at every batch on the H100 (2026-12-06-speed): left out unless asked for
    # the default (H100 2026-12-07: folded-norm + split-skip + planar-qkv, 44% MFU at batch 256) beside the one before it
    VARIANTS=${VARIANTS:-default+channels-last+fused-affines+channels-last-cat+folded-norm+split-skip+planar-qkv+whole-graph,default+channels-last+fused-affines+channels-last-cat+whole-graph}
    ZOO_VARIANTS=${ZOO_VARIANTS:-default+channels-last+fused-affines+channels-last-cat+folded-norm+split-skip+planar-qkv+whole-graph}
    pack() { cp $W/timings.txt "$OUT/" 2>/dev/null; tar czf "$OUT/$STAGE.tgz" -C $W results logs profile timings.txt 2>/dev/null; }
    note() { echo "[$SECONDS s] $*" | tee -a $W/timings.txt; }
    cap() {   # LIMIT [RESERVE]: LIMIT seconds, or what is left of BUDGET_S once RESERVE is kept for later steps
        local left=$((END - SECONDS - ${2:-0})); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
    timed() {   # NAME LIMIT CMD...: wall seconds and exit status into timings.txt, output into logs/NAME.log
        local name=$1 limit=$2 t0=$EPOCHREALTIME; shift 2
        timeout "$limit" "$@" > "$W/logs/$name.log" 2>&1; local rc=$?
        note "$name: $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}") s, exit $rc (limit $limit s)"
        grep -h '^compile cache' "$W/logs/$name.log" | sed 's/^/    /' | tee -a $W/timings.txt
        return $rc
    }
    prewarm() {   # MODEL VARIANT BATCHES LIMIT: compile into the shared cache, nothing timed (OUTPUT_CODE=V1,..: with
                  # TORCH_LOGS=output_code for those ddpmpp variants, the generated kernels' source in their log)
        local logs=; [[ $1 = ddpmpp && ,${OUTPUT_CODE:-}, = *,$2,* ]] && logs=output_code
        timed "prewarm-$1-$2-b${3//,/-}" "$4" env ${logs:+TORCH_LOGS=$logs} TORCHINDUCTOR_COMPILE_THREADS=4 "${SIDA[@]}" bench generate \
            --bundle $W/bundles/$1 --backends compile-bf16 --compile-variants "$2" --batch "$3" --runs 1 --warmup 2 \
            --warmup-seconds 0 --out $W/prewarm --no-plot
    }
    exported() { grep -q '"torch_compile-bf16"' "$1/exports/manifest.json" 2>/dev/null; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $W/logs/machine.txt
    python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a $W/logs/machine.txt
    python3 -c 'from bench.presets import resolve_bundle; resolve_bundle("preset:ddpmpp-cifar10")' > $W/logs/preset.log 2>&1
    for copy in "" -start; do      # -start: the cold/warm start bundles (their export must not replace the tables' one)
        cp -r build/bench-bundles/ddpmpp-cifar10 $W/bundles/ddpmpp$copy && cp -r models/zoo/cifar10-cond $W/bundles/zoo$copy
    done

    if [ "$STAGE" = autotune ]; then
        LIMIT=$(cap 400 90)
        for m in ddpmpp zoo; do for b in 1 64 256; do prewarm $m max-autotune $b $LIMIT & done; done
        wait
        for m in ddpmpp zoo; do
            timed export-$m-max-autotune "$(cap 60 10)" "${SIDA[@]}" export compile --bundle $W/bundles/$m --mode max-autotune \
                --buckets 1,64,256
        done
        tar czf "$OUT/autotune-exports.tgz" -C $W/bundles ddpmpp/exports zoo/exports 2>/dev/null
        pack
        exit 0
    fi
    TUNED=
    if [ -n "${AUTOTUNE_EXPORTS:-}" ] && tar xzf "$AUTOTUNE_EXPORTS" -C $W/bundles; then
        TUNED=,max-autotune; note "max-autotune code from $AUTOTUNE_EXPORTS"; fi

    PREWARM=$(cap "${PREWARM_S:-190}" ${PREWARM_RESERVE:-330})
    [ "${STARTS:-1}" = 1 ] && for m in zoo ddpmpp; do      # STARTS=0: no cold/warm start rows
        timed $m-cold-export-contended $PREWARM env SIDA_CACHE_DIR=$W/cold-$m "${SIDA[@]}" export compile \
            --bundle $W/bundles/$m-start --mode reduce-overhead --buckets 1,8,64 &
    done
    SB=${SPEED_BATCHES:-1,64,256}      # the table's batches (1,8,64,256: also the serve bucket 8)
    for v in ${VARIANTS//,/ }; do prewarm ddpmpp "$v" $SB $PREWARM & done
    [ "$ZOO_VARIANTS" = none ] && ZOO_VARIANTS=        # none: no zoo rows
    for v in ${ZOO_VARIANTS//,/ }; do prewarm zoo "$v" $SB $PREWARM & done
    wait
    for f in $W/logs/prewarm-ddpmpp-*.log; do grep -q 'Output code' "$f" && gzip "$f"; done     # the kernels' source
    pack
    for m in zoo ddpmpp; do
        exported $W/bundles/$m-start && timed $m-warm-first-image "$(cap 45 250)" env SIDA_CACHE_DIR=$W/empty-$m \
            "${SIDA[@]}" generate --bundle $W/bundles/$m-start --backend compile --seeds 0 --grid $W/logs/$m-first.png
    done
    table() {   # MODEL BACKENDS VARIANTS LIMIT
        timed "table-$1" "$4" "${SIDA[@]}" bench generate --bundle $W/bundles/$1 --backends "$2" --compile-variants "$3" \
            --batch $SB --runs 20 --max-seconds 1 --warmup 3 --warmup-seconds 0.3 --out $RES --name "speed-$1"
    }
    BACKENDS=compile-bf16; [ "${EAGER:-torch-fp32}" != none ] && BACKENDS=${EAGER:-torch-fp32},$BACKENDS   # EAGER=none: no eager row
    table ddpmpp $BACKENDS "$VARIANTS$TUNED" "$(cap "${TABLE_S:-170}" ${TABLE_RESERVE:-100})"
    pack

    BEST=$(python3 - "$RES" <<'EOF'
import glob, json, sys
rows = [r for f in glob.glob(f'{sys.argv[1]}/*/*-speed-ddpmpp.json') for r in json.load(open(f))['results']
        if r.get('compile_options') and 'images_per_s' in r and r.get('parity', {}).get('passed')]
fast = min((r for r in rows if r['batch'] == 1), key=lambda r: r['p50_ms'], default=None)
wide = max((r for r in rows if r['batch'] == 256), key=lambda r: r['images_per_s'], default=None)
print(','.join(dict.fromkeys(r['compile_options'] for r in (fast, wide) if r)))
EOF
)
    note "best ddpmpp variants (batch 1 p50, batch 256 img/s): ${BEST:-none}"
    BEST=${PROFILE:-$BEST}      # PROFILE=V1,..: profile these instead
    [ -n "$BEST" ] && timed profile-ddpmpp "$(cap 70 ${PROFILE_RESERVE:-60})" "${SIDA[@]}" bench generate --bundle $W/bundles/ddpmpp \
        --backends compile-bf16 --compile-variants "$BEST" --batch 1,256 --runs 10 --max-seconds 1 --warmup 3 \
        --warmup-seconds 0 --profile $W/profile --out $RES --name profile-ddpmpp --no-plot
    pack
    [ -n "$ZOO_VARIANTS" ] && table zoo compile-bf16 "$ZOO_VARIANTS$TUNED" "$(cap 110)"     # last: if cut short, its rows are in logs/table-zoo.log
    pack
    ;;
triton)
    # PyTriton needs numpy<2 (numpy 2 garbles its tensors) and its python-backend stub finds packages only through the
    # interpreter's own site-packages (PYTHONPATH does not reach it). So: a venv over the machine's Python whose .pth
    # puts the carried site (pytriton, numpy 1.26) and the server wheels first, for the server and the stub alike.
    CARRY=${3:?carry dir}
    tar xJf "$CARRY/tsite.tar.xz" -C /tmp && python3 -m pip install -q --no-index --no-deps --target /tmp/srv "$CARRY"/*.whl
    python3 -m venv --without-pip --system-site-packages /tmp/tvenv
    SITE=$(/tmp/tvenv/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # python3 may itself be a venv (torch, click live there, not in the base Python the new venv sees): its paths too.
    OUTER=$(python3 -c 'import sys; print(repr([p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]))')
    echo "import sys; sys.path[:0] = ['/tmp/tsite', '/tmp/srv', '$PWD']; sys.path += $OUTER" > "$SITE/sida-carry.pth"
    SIDA=(/tmp/tvenv/bin/python3 -m sida.cli); export PATH=/tmp/srv/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    /tmp/tvenv/bin/python3 -c 'import sysconfig as s, os, numpy, pytriton; d = s.get_config_var("LIBDIR"); n = s.get_config_var("INSTSONAME")
print("numpy", numpy.__version__, "libpython", os.path.join(d, n), os.path.exists(os.path.join(d, n)))' | tee -a "$OUT/machine.txt"
    RES=$OUT/results
    /tmp/tvenv/bin/python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))'
    OPTS=(--backend compile --compile-mode reduce-overhead --max-batch 128 --max-queue-images 4096)
    for mode in fastapi triton; do
        extra=(); limit=240; [ $mode = triton ] && extra=(--triton) && limit=150     # triton: compiled code cached by then
        if server_up ddpmpp-$mode build/bench-bundles/ddpmpp-cifar10 $limit "${OPTS[@]}" "${extra[@]}"; then
            load http-ddpmpp-$mode-n1 --concurrency 1 --n 1 --duration 4 --warmup-requests 20
            load http-ddpmpp-$mode-n16-npy --concurrency 16,32,64 --n 16 --format npy --response binary --duration 4
            load http-ddpmpp-$mode-open --rate 150,300 --n 16 --format npy --response binary --duration 4 --deadline-ms 1000
            server_down ddpmpp-$mode; fi
    done
    timeout $((590 - SECONDS)) "${SIDA[@]}" bench generate --backends compile-bf16 --compile-mode reduce-overhead --batch 1,16,64,128 \
        --runs 20 --max-seconds 3 --out "$RES" --bundle build/bench-bundles/ddpmpp-cifar10 --name generate-ddpmpp 2>&1 | tail -n 8
    echo "stage took $SECONDS s"
    ;;
classifier)
    CARRY=${3:?carry dir}; DATA=$CARRY/cifar10-jpeg.tar.gz; W=/tmp/clf; mkdir -p $W && tar xzf $CARRY/captions.tar.gz -C $W
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    for spec in ${CANDIDATES-32:40 48:30 64:24}; do         # WIDTH:EPOCHS, smallest first
        timeout 150 "${SIDA[@]}" train classifier --data $DATA --out $W/w${spec/:/-e} --width ${spec%:*} --epochs ${spec#*:} \
            > "$OUT/classifier-w${spec/:/-e}.log" 2>&1
        cp $W/w${spec/:/-e}/classifier.json "$OUT/classifier-w${spec/:/-e}.json" 2>/dev/null
    done
    BEST=$(smallest_accurate $W 'w*')
    echo "kept: ${BEST:-none reached 90%}" | tee -a "$OUT/machine.txt"
    [ -n "$BEST" ] || exit 0
    mkdir -p "$OUT/classifier" && cp $BEST/classifier.pt $BEST/classifier.json "$OUT/classifier/"
    EVAL=(--data $DATA --classifier $BEST/classifier.pt --samples ${SAMPLES:-10k} --no-fid --record)
    CAPTIONS=$W/captions evaluate_zoo
    ;;
fid)
    # The working tree (71 MB with the zoo's weights: leave what this stage does not read behind with
    # bench/device_tree.sh), the data (20 MB) and an Inception copy (fp16: 40 MB gzipped; int8: 19 MB, a larger FID
    # deviation, docs/training.md) must fit 64 MiB together.
    CARRY=${3:?carry dir}; U=/tmp/unpacked; mkdir -p $U
    WEIGHTS=$(ls $CARRY/inception-*.pt.gz | head -n 1); gunzip -c "$WEIGHTS" > $U/inception.pt
    [ -f $CARRY/captions.tar.gz ] && tar xzf $CARRY/captions.tar.gz -C $U
    EVAL=(--data $CARRY/cifar10-jpeg.tar.gz --classifier models/zoo/fd-cifar-classifier/classifier.pt
        --samples ${SAMPLES:-50k} --fid-weights $U/inception.pt --stats-cache /tmp/stats-cache --record)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    echo "Inception copy: ${WEIGHTS##*/}" | tee -a "$OUT/machine.txt"
    CAPTIONS=$U/captions evaluate_zoo
    ;;
quality-teacher)
    # [quality]'s class chain, one call per stage on one warm machine: this one (a stronger FD-CIFAR classifier, then
    # a teacher), then quality-student, then quality-eval. The state stays in $Q (build/quality; ignored: kept between
    # calls while the machine is held); what a later call needs also comes back in OUT (classifier.pt,
    # teacher-bundle.tar), so a fresh machine can be handed it by carry. INIT_FROM=BUNDLE continues a teacher.
    DATA=${3:?data}; quality_condition; END=${END_S:-560}
    fresh_run $Q/teacher-run; rm -rf $Q/logs; mkdir -p $Q/logs
    if [ -n "${INIT_FROM:-}" ] && [[ "$(realpath -m "$INIT_FROM")" == "$(realpath -m $Q/teacher-run.old)"* ]]; then
        rm -rf $Q/init-from && cp -r "$(realpath -m "$INIT_FROM")" $Q/init-from && INIT_FROM=$Q/init-from; fi   # the last run's
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $Q/logs/machine.txt
    for spec in ${CANDIDATES-32:40 48:30}; do         # WIDTH:EPOCHS, smallest first (CANDIDATES='': none, keep the zoo's)
        name=w${spec/:/-e}; rm -rf $Q/clf-$name
        timeout $(left 250 150) "${SIDA[@]}" train classifier --data $DATA --out $Q/clf-$name --width ${spec%:*} \
            --epochs ${spec#*:} > $Q/logs/classifier-$name.log 2>&1
        cp $Q/clf-$name/classifier.json $Q/logs/classifier-$name.json 2>/dev/null
        tail -n 2 $Q/logs/classifier-$name.log
    done
    if [ -n "${CANDIDATES-x}" ]; then
        BEST=$(smallest_accurate $Q 'clf-*')
        echo "classifier kept: ${BEST:-none reached ${MIN_ACCURACY:-0.90}}" | tee -a $Q/logs/machine.txt
        if [ -n "$BEST" ]; then mkdir -p $Q/classifier && cp $BEST/classifier.pt $BEST/classifier.json $Q/classifier/ \
            && cp $BEST/classifier.pt "$OUT/classifier.pt"; fi
    fi
    TEACHER=(train teacher "${ARCH[@]}" "${COND_ARGS[@]}" "${TEXT_ARGS[@]}" --data "$DATA" --data-prefix train --images 200M
             --batch 512 --lr 1e-3 --lr-rampup 200k --ema 250k --save-dtype fp16 --channels-last --tf32 --log-every 100k
             --sample-every 5M --checkpoint-every 50M ${INIT_FROM:+--init-from $INIT_FROM}
             ${LABEL_DROPOUT:+--label-dropout $LABEL_DROPOUT})
    # CUDA graphs (compiled in the first iterations; COMPILE= turns them off); if that run dies early, eager for the time left
    train_with_fallback $Q/teacher-run $Q/logs/teacher "${TEACHER[@]}"
    cp $Q/teacher-run/log.jsonl $Q/logs/teacher-log.jsonl; cp $Q/teacher-run/config.json $Q/logs/teacher-config.json
    cp $Q/teacher-run/samples/*.png $Q/logs/ 2>/dev/null
    [ -d $Q/teacher-run/bundle ] && tar cf "$OUT/teacher-bundle.tar" -C $Q/teacher-run bundle
    tar czf "$OUT/teacher-logs.tgz" -C $Q logs
    ;;
quality-student)
    # SiDA from quality-teacher's teacher (or TEACHER=BUNDLE) in the FD-CIFAR space of its classifier (or
    # CLASSIFIER=FILE), with SiDA's short-run schedule (see `student`). Eager unless COMPILE='--compile
    # reduce-overhead': with CUDA graphs, a 225 s run on an H100 (2026-12-07) trained 20,480 images (134 s compiling
    # the fake score's phase, then 5,230 img/s in it; the generator's phase, from 20k, compiled for the rest), where
    # eager trained the zoo's student, 295k images, in 370 s on an H200. Since 2026-12-08 the graphs are static (a
    # guided teacher's doubled batch made later graphs dynamic) and persist in build/compile-cache for the next call
    # on the warm machine (quality_condition).
    DATA=${3:?data}; quality_condition; END=${END_S:-560}; quality_classifier; COMPILE=${COMPILE-}
    # RESUME=1 continues the last call's run on this warm machine (its newest checkpoint; the logs accumulate).
    T=${TEACHER:-$Q/teacher-run/bundle}; RESUME_ARGS=(); RESUMED_GUIDANCE=1
    if [ -n "${RESUME:-}" ]; then
        [ -d $Q/student-run ] || { echo "RESUME=1: no $Q/student-run on this machine (a cold one?)" >&2; exit 2; }
        RESUME_ARGS=(--resume auto); mkdir -p $Q/logs-student; mv $Q/student-run/bundle $Q/student-run/bundle.before 2>/dev/null
        RESUMED_GUIDANCE=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['distill'].get('guidance', 1))" \
            $Q/student-run/config.json)      # the run's own unless GUIDANCE is given (distill refuses a change)
    else
        fresh_run $Q/student-run; rm -rf $Q/logs-student; mkdir -p $Q/logs-student
    fi
    echo "teacher $T, classifier $C, ${RESUME_ARGS[*]:-fresh}" | tee -a $Q/logs-student/machine.txt
    student_command ${GUIDANCE:-$RESUMED_GUIDANCE}
    train_with_fallback $Q/student-run $Q/logs-student/student${RESUME:+-resumed-$(date +%H%M%S)} "${STUDENT[@]}" "${RESUME_ARGS[@]}"
    cp $Q/student-run/log.jsonl $Q/logs-student/student-log.jsonl
    cp $Q/student-run/config.json $Q/logs-student/student-config.json
    cp $Q/student-run/samples/*.png $Q/logs-student/ 2>/dev/null
    [ -d $Q/student-run/bundle ] && tar cf "$OUT/student-bundle.tar" -C $Q/student-run bundle
    tar czf "$OUT/student-logs.tgz" -C $Q logs-student
    ;;
quality-guidance)
    # [quality]'s guidance sweep: a student of quality-student's settings at each scale of GUIDANCES ("1 1.2"), from one
    # teacher (TEACHER=, else the chain's), trained side by side, eager (or COMPILE='--compile reduce-overhead', with
    # no eager fallback here): one of these small networks keeps the GPU far from busy, so the runs share it at little
    # cost each. Bundles and logs in OUT/students-guidance.tar;
    # evaluate them with quality-eval STUDENTS="g1=build/quality/guidance/g1/bundle g1.2=...".
    DATA=${3:?data}; quality_condition; END=${END_S:-560}; quality_classifier
    T=${TEACHER:-$Q/teacher-run/bundle}; G=$Q/guidance; rm -rf $G && mkdir -p $G/logs; pids=()
    echo "teacher $T, classifier $C, guidance ${GUIDANCES:-1 1.2}, ${CONTINUE:-fresh}" | tee $G/logs/machine.txt
    for g in ${GUIDANCES:-1 1.2}; do
        student_command $g
        timeout $(left 15) "${SIDA[@]}" "${STUDENT[@]}" ${COMPILE:-} --out $G/g$g --time-limit $(left 75)s \
            > $G/logs/student-g$g.log 2>&1 &
        pids+=($!)
    done
    set -- ${GUIDANCES:-1 1.2}
    for p in "${pids[@]}"; do wait $p; echo "student g$1: exit $? at $SECONDS s" | tee -a $G/logs/machine.txt; shift; done
    for g in ${GUIDANCES:-1 1.2}; do cp $G/g$g/log.jsonl $G/logs/student-g$g-log.jsonl; cp $G/g$g/config.json \
        $G/logs/student-g$g-config.json; done 2>/dev/null
    tar cf "$OUT/students-guidance.tar" -C $G logs $(cd $G && ls -d g*/bundle 2>/dev/null)
    ;;
quality-eval)
    # FID (50k samples against the 50k training images, INCEPTION: a gzipped copy from `sida bench fid-weights`) and
    # FD-CIFAR of the chain's teacher (35 and 17 NFE), its student (when there is one) and the test split, recorded
    # into copies of both bundles (their sida.json come back). TEACHER, STUDENT, CLASSIFIER override the chain's paths.
    DATA=${3:?data}; INC=${4:?inception copy, gzipped}; quality_condition; END=${END_S:-560}; quality_classifier
    E=$Q/eval; rm -rf $E && mkdir -p $E/logs
    T=${TEACHER:-$Q/teacher-run/bundle}; S=${STUDENT:-$Q/student-run/bundle}
    gunzip -c "$INC" > /tmp/inception.pt
    cp -r "$T" $E/teacher
    STUDENT_ARGS=()
    if [ -n "${STUDENTS:-}" ]; then          # STUDENTS="NAME=BUNDLE ...": these students instead (quality-guidance's)
        for named in $STUDENTS; do n=${named%%=*}; cp -r "${named#*=}" $E/$n && STUDENT_ARGS+=(--student $n=$E/$n); done
    elif [ -d "$S" ]; then
        cp -r "$S" $E/student && STUDENT_ARGS=(--student sida=$E/student)
    fi
    [ -f $Q/student-run/log.jsonl ] && [ -z "${STUDENT:-}${STUDENTS:-}" ] && STUDENT_ARGS+=(--curves sida=$Q/student-run)
    EVAL=(train evaluate --data "$DATA" "${TEXT_ARGS[@]}" "${TEST_ARGS[@]}" --classifier "$C" --samples ${SAMPLES:-50k}
          --fid-weights /tmp/inception.pt --stats-cache $Q/stats-cache --record)
    echo "inception ${INC##*/}, classifier $C, teacher $T, student ${STUDENT_ARGS[*]:-none}" | tee $E/logs/machine.txt
    timeout $(left $([ "${NFE17:-1}" = 0 ] && echo 5 || echo 130)) "${SIDA[@]}" "${EVAL[@]}" --teacher teacher=$E/teacher --teacher-steps 18 "${STUDENT_ARGS[@]}" \
        --out $E/nfe35 2>&1 | grep -v 'it/s\]\|img/s\]' | tee $E/logs/nfe35.log
    for named in ${STUDENTS:-}; do cp $E/${named%%=*}/sida.json "$OUT/${named%%=*}.sida.json"; done
    cp $E/student/sida.json "$OUT/student.sida.json" 2>/dev/null    # in OUT at once: a call cut short still brings
    cp $E/teacher/sida.json "$OUT/teacher.sida.json"                 # these back
    tar czf "$OUT/eval-nfe35.tgz" -C $E $(cd $E && ls -d logs nfe35 2>/dev/null)
    [ "${NFE17:-1}" = 0 ] && exit 0          # NFE17=0: the 35-NFE run only
    timeout $(left 10) "${SIDA[@]}" "${EVAL[@]}" --test-prefix '' --class-dependence-seeds 0 \
        --teacher teacher=$E/teacher --teacher-steps 9 --out $E/nfe17 2>&1 | grep -v 'it/s\]\|img/s\]' | tee $E/logs/nfe17.log
    cp $E/teacher/sida.json "$OUT/teacher.sida.json"
    tar czf "$OUT/eval-nfe17.tgz" -C $E $(cd $E && ls -d logs nfe17 2>/dev/null)
    ;;
quality-continue)
    # [quality]'s teacher chain in one call: TEACHER (a bundle) evaluated (FD-CIFAR, class accuracy and class
    # dependence, SAMPLES images at 35 NFE, in CLASSIFIER's space, recorded into a copy), continued by a warm restart
    # (--init-from that copy, CUDA graphs) for the time left, and the continued teacher evaluated the same way (its
    # progress plot then holds both). The continued bundle (teacher1-bundle.tar) and both sida.json come back.
    # FINAL_EVAL_S: seconds kept for the second evaluation (160; 60 skips it, for a short call). EVAL0=0 skips the
    # first (TEACHER measured before); LABEL_DROPOUT=P sets the continued teacher's label dropout (else TEACHER's).
    DATA=${3:?data}; T=${TEACHER:?TEACHER=bundle}; : "${CLASSIFIER:?CLASSIFIER=file}"; quality_condition; END=${END_S:-560}
    quality_classifier; Q=$Q/chain; F=${FINAL_EVAL_S:-160}
    [ "$F" -ge 60 ] || { echo "FINAL_EVAL_S=$F: give 60 (no second evaluation) or more" >&2; exit 2; }
    rm -rf $Q && mkdir -p $Q/logs && cp -r "$T" $Q/teacher0
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $Q/logs/machine.txt
    EVAL=(train evaluate --data "$DATA" "${TEXT_ARGS[@]}" "${TEST_ARGS[@]}" --classifier "$C" --samples ${SAMPLES:-10k} --no-fid
          --teacher-steps 18 --record --class-dependence-seeds ${DEP_SEEDS:-100} --stats-cache build/quality/stats-cache)
    if [ "${EVAL0:-1}" != 0 ]; then          # EVAL0=0: TEACHER is already measured in this space
        timeout $(left 30 150) "${SIDA[@]}" "${EVAL[@]}" --teacher teacher0=$Q/teacher0 --out $Q/eval0 2>&1 \
            | grep -v 'it/s\]\|img/s\]' | tee $Q/logs/eval0.log
        cp $Q/teacher0/sida.json "$OUT/teacher0.sida.json"
    fi
    if [ $((END - SECONDS - F)) -lt 60 ]; then          # under a minute left to train: the evaluation alone
        tar czf "$OUT/chain-logs.tgz" -C $Q logs $(cd $Q && ls -d eval0 2>/dev/null); exit 0; fi
    CONTINUE=(train teacher "${ARCH[@]}" "${COND_ARGS[@]}" "${TEXT_ARGS[@]}" --data "$DATA" --data-prefix train --images 200M
              --batch 512 --lr 1e-3 --lr-rampup 200k --ema 250k --save-dtype fp16 --channels-last --tf32 --log-every 100k
              --sample-every 50M --checkpoint-every 50M --init-from $Q/teacher0 ${LABEL_DROPOUT:+--label-dropout $LABEL_DROPOUT})
    # the run's own time limit ends it F seconds before END (setup and the bundle's writing fall in the margin after)
    timeout $(left $((F - 40))) "${SIDA[@]}" "${CONTINUE[@]}" ${COMPILE---compile reduce-overhead} --out $Q/run \
        --time-limit $(left $F)s > $Q/logs/teacher1.log 2>&1
    echo "continued teacher: exit $? at $SECONDS s" | tee -a $Q/logs/machine.txt
    cp $Q/run/log.jsonl $Q/logs/teacher1-log.jsonl; cp $Q/run/config.json $Q/logs/teacher1-config.json
    cp $Q/run/samples/*.png $Q/logs/ 2>/dev/null
    [ -d $Q/run/bundle ] && tar cf "$OUT/teacher1-bundle.tar" -C $Q/run bundle
    tar czf "$OUT/chain-logs.tgz" -C $Q logs $(cd $Q && ls -d eval0 2>/dev/null)
    [ "$F" -gt 60 ] && [ -d $Q/run/bundle ] || exit 0          # FINAL_EVAL_S=60: no time for the second evaluation
    timeout $(left 5) "${SIDA[@]}" "${EVAL[@]}" --teacher teacher1=$Q/run/bundle --out $Q/eval1 2>&1 \
        | grep -v 'it/s\]\|img/s\]' | tee $Q/logs/eval1.log
    cp $Q/run/bundle/sida.json "$OUT/teacher1.sida.json"
    tar czf "$OUT/chain-logs.tgz" -C $Q logs $(cd $Q && ls -d eval0 eval1 2>/dev/null)
    ;;
ddp1)
    # [scale-train] on one GPU: SiD, DDPM++ CIFAR-10 (random teacher), batch 128, --compile reduce-overhead, first as
    # one plain process, then under torchrun with one process (DDP-wrapped: the multi-GPU code path with CUDA graphs);
    # `sida bench scaling` over both gives the DDP overhead at world size 1.
    T=$(python3 -c 'from bench.presets import resolve_bundle; print(resolve_bundle("preset:ddpmpp-cifar10"))' | tail -n 1)
    ARGS=(train distill --method sid --teacher "$T" --batch 128 --compile reduce-overhead --time-limit ${RUN_S:-200}s
          --log-every 1280 --sample-every 1000M --checkpoint-every 1000M --seed 0)
    timeout $((${RUN_S:-200} + 60)) "${SIDA[@]}" "${ARGS[@]}" --out "$OUT/plain" > "$OUT/plain.log" 2>&1
    echo "plain: exit $?"
    timeout $((${RUN_S:-200} + 60)) torchrun --standalone --nproc_per_node 1 -m sida.cli "${ARGS[@]}" --out "$OUT/ddp" \
        > "$OUT/ddp.log" 2>&1
    echo "torchrun, 1 process (DDP): exit $?"
    "${SIDA[@]}" bench scaling "$OUT/plain" "$OUT/ddp" --skip 3 --out "$OUT/results" --name ddp-world1 2>&1 | tail -n 4
    ;;
ratio)
    # [speed]'s student-against-teacher bar (>= 30x per image at 35 NFE Heun, same backend, batch and precision):
    # ddpmpp-cifar10 (random weights: speed only) as both, eager bf16 and compiled (CUDA graphs), batch 64.
    RES=$OUT/results
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    for backend in ${BACKENDS:-compile eager}; do      # BACKENDS='compile': the compiled pair only
        timeout ${STAGE_S:-270} "${SIDA[@]}" bench teacher-vs-student --teacher preset:ddpmpp-cifar10 \
            --student preset:ddpmpp-cifar10 --backend $backend --batch 64 --nfe 35 --runs 5 --out $RES \
            --name teacher-vs-student-ddpmpp-$backend 2>&1 | tee "$OUT/ratio-$backend.log"
    done
    ;;
sd)
    WHEELS=${3:?wheels dir}
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    RES=/tmp/results
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
    # The generator with the default compile, then its UNet and VAE decoder apart (--components), at batch 1 and 16
    # SD_VARIANTS=V1,..: compile variants side by side (e.g. the default and the default+folded-torch-norm)
    timeout ${STAGE_S:-540} "${SIDA[@]}" bench generate --bundle preset:sd15-512 --backends ${SD_BACKENDS:-torch-bf16,compile-bf16} \
        ${SD_VARIANTS:+--compile-variants "$SD_VARIANTS"} --batch ${BATCHES:-1,16} --components --runs 20 --max-seconds 8 \
        --out $RES --name generate-sd15-512 2>&1 \
        | grep -v 'config/s' | tee "$OUT/generate-sd15.log"
    [ "${TRAIN:-0}" = 1 ] && timeout 240 "${SIDA[@]}" bench train --network sd15-unet --variants lsg-bf16 --batch 8 --iters 5 \
        --warmup 2 --out $RES --name train-lsg-sd15
    tar czf "$OUT/results-sd.tgz" -C $RES .
    ;;
soak)
    WHEELS=${3:?wheels dir}
    python3 -m pip install -q --no-index --target /tmp/srv "$WHEELS"/*.whl && export PYTHONPATH=/tmp/srv:${PYTHONPATH:-}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    timeout $((590 - SECONDS)) "${SIDA[@]}" bench soak --bundle models/zoo/cifar10-cond --backend "${BACKEND:-compile-bf16}" \
        --minutes "${MINUTES:-8}" --concurrency "${CONCURRENCY:-32}" --out "$OUT" 2>&1 | tee "$OUT/soak.log"
    ;;
*) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
