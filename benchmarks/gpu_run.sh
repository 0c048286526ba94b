#!/usr/bin/env bash
# What the GPU results under benchmarks/results/ came from, run from the repository root on a CUDA host
# with the [gpu] extra installed (or an offline bundle of it on PYTHONPATH):
#   gpu_tests.log              pytest -m gpu: Unsloth's train_on_responses_only labels equal the hf
#                              backend's masks on the bundled data; the train stage on the unsloth backend
#   train_backends.{json,md}   benchmarks/train_backends.py (Qwen3-4B-shape random checkpoint)
#   generate_speed_gpu.json    benchmarks/generate_speed.py --qwen3-4b-shape
#   gpu_dvc_repro.log, gpu_dvc_repro_{train,eval}.json, gpu_dvc_repro_report.md
#                              `dvc repro` of the tiny default (train.backend: auto -> unsloth)
set -euo pipefail
results=benchmarks/results
mkdir -p "$results"
python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$results/gpu_tests.log"
python3 benchmarks/train_backends.py
python3 benchmarks/generate_speed.py --qwen3-4b-shape
python3 -m dvc repro 2>&1 | tee "$results/gpu_dvc_repro.log"
cp metrics/train.json "$results/gpu_dvc_repro_train.json"
cp metrics/eval.json "$results/gpu_dvc_repro_eval.json"
cp metrics/report.md "$results/gpu_dvc_repro_report.md"
