#!/bin/sh
# Make the Triton model repository that deploy/compose.yaml serves: bundle -> (TensorRT engine) -> repository.
#
#   deploy/model-repository.sh BUNDLE OUT [RUNTIME]     RUNTIME: tensorrt (default; fp16 engine) | onnxruntime (fp32)
#
# The compose service `model-repository` runs it once before tritonserver starts; it runs in the sida image, so
# the engine is built by the TensorRT of the image's NGC release (keep tritonserver on the same release).
# Every run rebuilds the export behind the parity gate (a TensorRT timing cache in the bundle makes rebuilds faster).
# A missing BUNDLE whose directory is named demo-untrained-ddpmpp is made: the small UNTRAINED demo model.
set -eu

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: $0 BUNDLE OUT [tensorrt|onnxruntime]" >&2
    exit 2
fi
bundle=$1
out=$2
runtime=${3:-tensorrt}

case "$runtime" in
    tensorrt) precision=fp16 ;;
    onnxruntime) precision=fp32 ;;   # triton-repo exports (and checks) the ONNX graph itself when it is missing
    *)
        echo "model-repository: RUNTIME must be tensorrt or onnxruntime, not '$runtime'" >&2
        exit 2
        ;;
esac

if [ ! -f "$bundle/sida.json" ]; then
    if [ "$(basename "$bundle")" != demo-untrained-ddpmpp ]; then
        echo "model-repository: no bundle at $bundle (no sida.json there)" >&2
        exit 1
    fi
    echo "model-repository: no bundle at $bundle; making the small UNTRAINED demo bundle there (its images are noise)" >&2
    python -m models.demo "$bundle"
fi

if [ "$runtime" = tensorrt ]; then
    sida export tensorrt --bundle "$bundle" --precision "$precision"
fi
sida export triton-repo --bundle "$bundle" --out "$out" --runtime "$runtime" --precision "$precision"
