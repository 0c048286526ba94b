"""export: write the merged model in each of `export.formats` that its kind offers, and verify every file
(GGUF files for causal LMs and vision models, each with an Ollama Modelfile, read back and generated from;
ONNX for classifiers, whose onnxruntime logits on the test split must match transformers').

Outs: models/export/<quantization>/{model.gguf,Modelfile} (base.gguf and adapter.gguf for an adapter;
models/export/mmproj.gguf beside them for a vision model) or models/export/onnx/, and metrics/export.json.
"""

from slothline import kinds
from slothline.artifacts import EXPORT_DIR, EXPORT_METRICS, MERGED_DIR, Manifest, atomic_dir, write_json
from slothline.dvcfile import require_model_declared
from slothline.errors import SlothlineError, run_stage
from slothline.params import load_params


def main() -> None:
    params = load_params()
    formats = params.export.formats
    manifest = Manifest.read(MERGED_DIR)
    task = kinds.get(manifest.kind)
    kinds.check_export_formats(task, formats)
    if manifest.method == "lora" and formats:  # a GGUF adapter's base.gguf is the base model's weights
        require_model_declared(manifest.base_model, ["export"])
    if manifest.method == "lora" and (unconverted := [f for f in formats if f != "gguf"]):
        raise SlothlineError(f"{MERGED_DIR}: holds the adapter alone (merge.save_method: lora); "
                             f"{'/'.join(f.upper() for f in unconverted)} export needs merge.save_method: "
                             "merged_16bit, or export.formats: [gguf] or []")
    with atomic_dir(EXPORT_DIR) as staging:
        report = task.export(formats, MERGED_DIR, staging, params) if formats else {}
    write_json(EXPORT_METRICS, report)
    if not formats:
        print("export.formats is empty: nothing to export")
    for name, result in report.items():
        checked = (f"logits within {result['max_abs_logit_diff']:.1e} of transformers on {result['rows_checked']} "
                   "test rows") if name == "onnx" else f"generation check: {result['generation_check']}"
        if "image_check" in result:
            checked += f"; image check (with mmproj.gguf): {result['image_check']}"
        print(f"{EXPORT_DIR}/{name}: {result['size_mb']} MB, {checked}")


if __name__ == "__main__":
    run_stage(main)
