#!/usr/bin/env bash
# The zoo recipe: everything behind models/zoo/, rerun on one GPU.
#
#   train/recipes/zoo.sh STAGE [OUT]      STAGE: captions | classifier | teachers | students | evaluate | all
#
# captions    CIFAR-10 captions from pixels + their MiniLM embeddings (needs the [text] extra; CPU is fine)
# classifier  the FD-CIFAR feature network (a small ResNet; not Inception)
# teachers    class- and text-conditioned EDM teachers, trained side by side on one GPU
# students    SiDA (class), SiD (class, for comparison) and SiDA (text) one-step students, side by side; the class
#             and text teachers (trained with LABEL_DROPOUT, 0.1) are classifier-free guided at GUIDANCE (1.5) in
#             their loss
# evaluate    FD-CIFAR and Inception FID of teacher (Heun 35 / 17 NFE), students and the test split; class accuracy;
#             time per image; EVAL_SAMPLES per model (50k, the FID protocol). FID needs the [fid] extra, or
#             FID_WEIGHTS=inception-fp16.pt (`sida bench fid-weights`)
#
# Lengths: TEACHER_IMAGES / STUDENT_IMAGES (images seen) and TIME_LIMIT (wall time per training job, e.g.
# 8m; 0 = none): whichever comes first ends a job with a checkpoint and a bundle. The defaults are what
# the shipped zoo used (see models/zoo/README.md).
# CONTINUE_FROM=PREVIOUS_OUT: the teachers continue that run's teacher bundles (`--init-from`: a warm restart that
# counts their images on), so each GPU run improves them, and its classifier is reused; evaluate then plots the
# teachers against their total images.
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT     # a failed stage never leaves training jobs behind

wait_all() { local rc=0 pid; for pid in "$@"; do wait "$pid" || rc=$?; done; return $rc; }
STAGE=${1:?usage: zoo.sh captions|classifier|teachers|students|evaluate|all [OUT]}
OUT=${2:-runs/zoo}
DATA=${DATA:-data/cifar10/cifar10-jpeg.tar.gz}   # what `sida data cifar10 --out data/cifar10` writes
SIDA=${SIDA:-sida}
TEACHER_IMAGES=${TEACHER_IMAGES:-200M}
STUDENT_IMAGES=${STUDENT_IMAGES:-20M}
TIME_LIMIT=${TIME_LIMIT:-0}
EVAL_SAMPLES=${EVAL_SAMPLES:-50k}      # the FID protocol: 50,000 samples against the 50,000 training images
CAPTIONS=${CAPTIONS:-$OUT/captions}          # captions.json + text-embeddings.safetensors
CLASSIFIER=$OUT/classifier/classifier.pt
FID=(--stats-cache "$OUT/stats-cache" ${FID_WEIGHTS:+--fid-weights "$FID_WEIGHTS"})   # both evaluations share the 50k reference
ARCH=(--preset ddpmpp --model-channels 64 --channel-mult 1,2,2 --num-blocks 2 --attn 16 --dropout 0.05)
COMMON=(--data "$DATA" --data-prefix train --time-limit "$TIME_LIMIT" --save-dtype fp16 --channels-last --tf32)
TEXT=(--captions "$CAPTIONS/captions.json" --text-embeddings "$CAPTIONS/text-embeddings.safetensors")
mkdir -p "$OUT"

captions() { $SIDA train captions --data "$DATA" --data-prefix train --out "$CAPTIONS"; }

classifier() {
    # A continued zoo keeps its feature network: FD-CIFAR numbers from different classifiers are not comparable
    # (the teacher-progress plot leaves such records out).
    if [ -n "${CONTINUE_FROM:-}" ] && [ -f "$CONTINUE_FROM/classifier/classifier.pt" ]; then
        mkdir -p "$OUT/classifier" && cp "$CONTINUE_FROM/classifier/classifier.pt" "$OUT/classifier/" && return
    fi
    $SIDA train classifier --data "$DATA" --out "$OUT/classifier" --epochs "${CLASSIFIER_EPOCHS:-30}" --width 48
}

teachers() {
    local from_class=() from_text=()
    if [ -n "${CONTINUE_FROM:-}" ]; then
        from_class=(--init-from "$CONTINUE_FROM/teacher-class/bundle"); from_text=(--init-from "$CONTINUE_FROM/teacher-text/bundle")
    fi
    # label (caption) dropout: the teachers also learn the unconditional score, so the students can be guided
    $SIDA train teacher "${ARCH[@]}" "${COMMON[@]}" "${from_class[@]}" --cond class --label-dropout "${LABEL_DROPOUT:-0.1}" \
        --out "$OUT/teacher-class" \
        --images "$TEACHER_IMAGES" --batch "${TEACHER_BATCH:-512}" --lr 1e-3 --lr-rampup 200k --ema 250k \
        --log-every 100k --sample-every 1M --checkpoint-every 2M > "$OUT/teacher-class.log" 2>&1 &
    local class_pid=$!
    $SIDA train teacher "${ARCH[@]}" "${COMMON[@]}" "${TEXT[@]}" "${from_text[@]}" --cond text --label-dropout "${LABEL_DROPOUT:-0.1}" \
        --out "$OUT/teacher-text" \
        --images "$TEACHER_IMAGES" --batch "${TEACHER_BATCH:-512}" --lr 1e-3 --lr-rampup 200k --ema 250k \
        --log-every 100k --sample-every 1M --checkpoint-every 2M > "$OUT/teacher-text.log" 2>&1 &
    local text_pid=$!
    wait_all $class_pid $text_pid
}

students() {
    local metric=(--metric-features "classifier:$CLASSIFIER" --metric-every 200k --metric-samples "${METRIC_SAMPLES:-5k}")
    local student=(--images "$STUDENT_IMAGES" --batch "${STUDENT_BATCH:-256}" --lr 2e-5 --log-every 20k --sample-every 500k --checkpoint-every 2M)
    local guided=(--guidance "${GUIDANCE:-1.5}")     # the teacher guided in the generator loss (shipped: 1.5)
    $SIDA train distill --method sida --teacher "$OUT/teacher-class/bundle" "${COMMON[@]}" "${student[@]}" "${metric[@]}" \
        "${guided[@]}" --out "$OUT/sida-class" > "$OUT/sida-class.log" 2>&1 &
    local p1=$!
    $SIDA train distill --method sid --teacher "$OUT/teacher-class/bundle" "${COMMON[@]}" "${student[@]}" "${metric[@]}" \
        "${guided[@]}" --out "$OUT/sid-class" > "$OUT/sid-class.log" 2>&1 &
    local p2=$!
    $SIDA train distill --method sida --teacher "$OUT/teacher-text/bundle" "${COMMON[@]}" "${TEXT[@]}" "${student[@]}" \
        "${guided[@]}" --out "$OUT/sida-text" > "$OUT/sida-text.log" 2>&1 &
    local p3=$!
    wait_all $p1 $p2 $p3
}

evaluate() {
    $SIDA train evaluate --data "$DATA" --classifier "$CLASSIFIER" --samples "$EVAL_SAMPLES" --record "${FID[@]}" \
        --teacher "teacher=$OUT/teacher-class/bundle" --student "SiDA=$OUT/sida-class/bundle" --student "SiD=$OUT/sid-class/bundle" \
        --curves "SiDA=$OUT/sida-class" --curves "SiD=$OUT/sid-class" --out "$OUT/eval-class"
    $SIDA train evaluate --data "$DATA" --classifier "$CLASSIFIER" --samples "$EVAL_SAMPLES" --record "${FID[@]}" --test-prefix '' \
        "${TEXT[@]}" --teacher "teacher-text=$OUT/teacher-text/bundle" --student "SiDA-text=$OUT/sida-text/bundle" \
        --out "$OUT/eval-text"
}

case $STAGE in
    all) [ -f "$CAPTIONS/text-embeddings.safetensors" ] || captions; classifier; teachers; students; evaluate ;;
    captions|classifier|teachers|students|evaluate) $STAGE ;;
    *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
