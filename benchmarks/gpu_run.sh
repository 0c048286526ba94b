#!/usr/bin/env bash
# What the GPU results under benchmarks/results/ came from, run from the repository root of a git
# checkout on a CUDA host with the [gpu] extra installed (or an offline bundle of it on PYTHONPATH).
# Run one part with `benchmarks/gpu_run.sh tests` and so on. tests and train take about 12 minutes each;
# where one command may run 10 minutes, run their pieces apart (pytest -k ..., --modes ...).
#   tests      gpu_tests*.log          pytest -m gpu: label parity, the unsloth chain, merge methods,
#                                      QLoRA, full fine-tuning, LoftQ
#   train      train_backends.{json,md}, train_backends_<mode>.log
#              benchmarks/train_backends.py (Qwen3-4B-shape random checkpoint), one mode per process
#   vision     vision_backends.{json,md}, vision_backends.log
#              benchmarks/vision_backends.py (Qwen3-VL-2B-shape random checkpoint, 448x448 pictures)
#   generate   generate_speed.{json,md,log}  benchmarks/generate_speed.py --vision (Qwen3-4B and Qwen3-VL-2B shapes)
#   generate-vision  generate_speed_vision.log, the vision model's rows of generate_speed.{json,md} again
#              (benchmarks/generate_speed.py --vision-only; the text model's earlier result kept)
#   classifier classifier_gpu_tests.log, classifier_backends.{json,md}, classifier_backends.log
#              pytest -m gpu tests/test_classifier.py (the classifier default on unsloth, LoRA and full),
#              then benchmarks/classifier_backends.py (ModernBERT-base-shape random checkpoint)
#   dvc        gpu_dvc_repro.log, gpu_dvc_repro_{train,eval,export}.json, gpu_dvc_repro_report.md
#              `dvc repro` of the whole DAG on the tiny default (train.backend: auto -> unsloth),
#              in a scratch copy of the checkout
#   evaluate-kv-cache  gpu_dvc_evaluate_kv_cache.log, gpu_dvc_evaluate_kv_cache_{auto,static,static_warm}.json and
#              gpu_dvc_evaluate_kv_cache_samples_{auto,static_warm}.json:
#              the tiny default's evaluate stage timed with evaluate.kv_cache: auto (the dynamic cache for its
#              one short batch a pass), then static on a cold and on a warm compile cache (a fresh host)
#   kv-cache-threshold  generate_speed_kv_cache_threshold.log: evaluate's text path (Qwen3-4B shape) on the dynamic
#              and on the static cache at 32 and 16 rows a batch (4 and 8 batches of 128 new tokens a pass), each
#              on empty compile caches: both passes' time either side of generation.STATIC_CACHE_FROM_STEPS
#   dvc-vision, dvc-classifier   gpu_dvc_repro_<kind>.log, gpu_dvc_repro_<kind>_{train,eval}.json,
#              gpu_dvc_repro_<kind>_report.md: the same for `dvc exp run -S kind=<kind>`
#   preference preference_backends.{json,md,log}: benchmarks/preference_backends.py (DPO, Qwen3-4B shape:
#              the preference stage on unsloth and hf against TRL + PEFT)
#   dvc-dpo    gpu_dvc_repro_dpo.log, gpu_dvc_repro_dpo_{train,eval,export,preference}.json, gpu_dvc_repro_dpo_report.md:
#              `dvc exp run -S preference.method=dpo` of the tiny default (SFT, then DPO, on unsloth)
#   scale      pipeline_scale.{json,md,log}: benchmarks/pipeline_scale.py (the whole DAG on a Qwen3-4B-shape
#              checkpoint, per stage; needs about 35 GB of disk)
#   export-8b  pipeline_scale_export_8b.log, added to pipeline_scale.{json,md}: the GGUF export alone on a
#              Qwen3-8B-shape checkpoint (CPU only; needs about 33 GB of disk)
#   multigpu   (a host with 2 GPUs) gpu_tests_multi_gpu.log: pytest -m gpu tests/test_multi_gpu.py;
#              multi_gpu.{json,md}, multi_gpu.log: benchmarks/multi_gpu.py; gpu_dvc_exp_2gpus.log and
#              gpu_dvc_exp_2gpus_train.json: `dvc exp run -S train.num_gpus=2` of the tiny default
set -euo pipefail
results=$PWD/benchmarks/results
mkdir -p "$results"
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(tests train vision classifier generate dvc)
# NVLink multicast stays off on multi-GPU hosts (the train stage sets the same for the processes it starts)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1} \
  NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
scratch_repository() {  # a new git repository holding this working tree's files (its code, data and params, as
  local scratch           # they are here, without models or prepared data); prints its path
  scratch=$(mktemp -d)
  tar -c --exclude=./.git --exclude=./.gpu --exclude=./.venv --exclude=./models --exclude=./data/prepared -f - . | tar -x -C "$scratch"
  (cd "$scratch" && git init -q && git config user.name ci && git config user.email ci@localhost && git add -A && git commit -qm scratch)
  echo "$scratch"
}
repro() {  # repro NAME [-S OVERRIDE...]: `dvc repro` in a scratch_repository, or `dvc exp run -S OVERRIDE...`
  local name=$1 scratch
  shift
  scratch=$(scratch_repository)
  (cd "$scratch"
   if [[ $# -eq 0 ]]; then python3 -m dvc repro; else python3 -m dvc exp run "$@"; fi 2>&1 | tee "$results/$name.log"
   for metrics in train preference eval export; do cp metrics/$metrics.json "$results/${name}_$metrics.json"; done
   cp metrics/report.md "$results/${name}_report.md")
  rm -rf "$scratch"
}
for part in "${parts[@]}"; do
  case $part in
    tests) python3 -m pytest -m gpu tests/test_gpu.py -v -s -p no:cacheprovider 2>&1 | tee "$results/gpu_tests.log" ;;
    train)
      rm -f "$results/train_backends.json"
      for mode in padded unpacked packed fixed-length; do
        python3 benchmarks/train_backends.py --modes $mode 2>&1 | tee "$results/train_backends_$mode.log"
      done ;;
    vision) python3 benchmarks/vision_backends.py 2>&1 | tee "$results/vision_backends.log" ;;
    generate) python3 benchmarks/generate_speed.py --vision 2>&1 | tee "$results/generate_speed.log" ;;
    generate-vision) python3 benchmarks/generate_speed.py --vision-only 2>&1 | tee "$results/generate_speed_vision.log" ;;
    classifier)
      python3 -m pytest -m gpu tests/test_classifier.py -v -s -p no:cacheprovider 2>&1 | tee "$results/classifier_gpu_tests.log"
      python3 benchmarks/classifier_backends.py 2>&1 | tee "$results/classifier_backends.log" ;;
    dvc) repro gpu_dvc_repro ;;
    evaluate-kv-cache)
      scratch=$(scratch_repository)
      (cd "$scratch"
       export TORCHINDUCTOR_CACHE_DIR=$scratch/.compile/inductor TRITON_CACHE_DIR=$scratch/.compile/triton  # cold at first
       timed() { local began=$(date +%s.%N); "$@"; echo "TIMED $(python3 -c "print(round($(date +%s.%N) - $began, 1))") s: $*"; }
       timed python3 -m dvc repro preference
       for run in auto static static_warm; do
         echo "=== evaluate, kv_cache: $run"
         [[ $run == static ]] && sed -i 's/^  kv_cache: auto$/  kv_cache: static/' params.yaml
         timed python3 -m dvc repro $([[ $run == static_warm ]] && echo -f -s) evaluate
         cp metrics/eval.json "$results/gpu_dvc_evaluate_kv_cache_$run.json"
         [[ $run == static ]] || cp metrics/samples.json "$results/gpu_dvc_evaluate_kv_cache_samples_$run.json"
       done) 2>&1 | tee "$results/gpu_dvc_evaluate_kv_cache.log"
      rm -rf "$scratch" ;;
    kv-cache-threshold)
      python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness, train_backends; harness.ensure_checkpoint('/tmp/qwen3-4b-shape', train_backends.build_checkpoint)"
      for run in 32:evaluate-dynamic 32:evaluate 16:evaluate-dynamic 16:evaluate; do
        cold=$(mktemp -d)
        echo "=== ${run#*:}, ${run%%:*} rows a batch"
        TORCHINDUCTOR_CACHE_DIR=$cold/inductor TRITON_CACHE_DIR=$cold/triton python3 benchmarks/generate_speed.py \
          --path "${run#*:}" --checkpoint /tmp/qwen3-4b-shape --rows "${run%%:*}"
        rm -rf "$cold"
      done 2>&1 | tee "$results/generate_speed_kv_cache_threshold.log" ;;
    dvc-vision|dvc-classifier) repro "gpu_dvc_repro_${part#dvc-}" -S "kind=${part#dvc-}" ;;
    scale) python3 benchmarks/pipeline_scale.py 2>&1 | tee "$results/pipeline_scale.log" ;;
    export-8b) python3 benchmarks/pipeline_scale.py --export-8b --no-dag 2>&1 | tee "$results/pipeline_scale_export_8b.log" ;;
    preference) python3 benchmarks/preference_backends.py 2>&1 | tee "$results/preference_backends.log" ;;
    dvc-dpo) repro gpu_dvc_repro_dpo -S preference.method=dpo ;;
    multigpu)
      python3 -m pytest -m gpu tests/test_multi_gpu.py -v -s -p no:cacheprovider 2>&1 | tee "$results/gpu_tests_multi_gpu.log"
      python3 benchmarks/multi_gpu.py 2>&1 | tee "$results/multi_gpu.log"
      scratch=$(scratch_repository)
      (cd "$scratch"
       python3 -m dvc exp run -S train.num_gpus=2 2>&1 | tee "$results/gpu_dvc_exp_2gpus.log"
       cp metrics/train.json "$results/gpu_dvc_exp_2gpus_train.json")
      rm -rf "$scratch" ;;
    *) echo "unknown part $part (tests, train, vision, classifier, generate, generate-vision, dvc, evaluate-kv-cache, kv-cache-threshold, dvc-vision, dvc-classifier, scale, export-8b, preference, dvc-dpo, multigpu)" >&2
       exit 2 ;;
  esac
done
