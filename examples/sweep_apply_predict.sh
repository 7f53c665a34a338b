#!/usr/bin/env bash
# Walk-through on the demo data: sweep -> apply --from-results -> predict.
#
#   bash examples/sweep_apply_predict.sh            # N=200 mosaics per split, a few minutes on 2 CPU cores
#   N=40 WORK=/tmp/walk bash examples/sweep_apply_predict.sh
#
# Needs `pip install -e ".[demo,export]"`. Everything runs offline.
set -euo pipefail
N=${N:-200}
WORK=${WORK:-csra-walkthrough}
mkdir -p "$WORK"

# 0. The demo writes Fashion-MNIST mosaics as a VOC-layout dataset (and runs its own sweep).
csra-posthoc demo --num-train "$N" --num-test "$N" --out "$WORK/demo.json"
DATA=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["demo"]["data_dir"])' "$WORK/demo.json")
CLASSES=$(python -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["classes"]))' "$WORK/demo.json")

# 1. Sweep: fit a linear probe on trainval, sweep lam on test, keep the results, scores and the probe.
csra-posthoc sweep --model efficientnet_lite0 --pretrained --head probe --dataset voc2007 --data-dir "$DATA" \
    --classes "$CLASSES" --save-head "$WORK/head.safetensors" --out "$WORK/results.json" --save-scores "$WORK/scores.npz"

# 2. Apply the paper's fixed lam from those results: one file for Python, one for any ONNX runtime.
csra-posthoc apply --model efficientnet_lite0 --pretrained --head-file "$WORK/head.safetensors" \
    --from-results "$WORK/results.json" --pick fixed --out "$WORK/patched.safetensors" --force
csra-posthoc apply --model efficientnet_lite0 --pretrained --head-file "$WORK/head.safetensors" \
    --from-results "$WORK/results.json" --pick fixed --out "$WORK/patched.onnx" --force

# 3. Predict on a few test mosaics, the baseline's ranks beside the patched ones.
ls "$DATA"/JPEGImages/test_0000[0-3].jpg | xargs csra-posthoc predict --patched "$WORK/patched.safetensors" \
    --top-k 3 --compare --json "$WORK/predictions.json"
echo "walk-through done: $WORK"
