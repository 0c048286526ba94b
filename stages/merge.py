"""merge: fold the LoRA adapter into the base weights (`merge.save_method`).

Outs: models/merged/, a Hugging Face directory (safetensors, processor, chat template, manifest.json) that
plain transformers loads with the kind's auto class: merged_16bit or merged_4bit; `lora` keeps the adapter.
"""

from slothline import backends, kinds
from slothline.artifacts import MERGED_DIR, TUNED_DIR, Manifest, atomic_dir
from slothline.dvcfile import require_model_declared
from slothline.errors import run_stage
from slothline.params import load_params
from slothline.runtime import inference_runtime, probe


def main() -> None:
    save_method = load_params().merge.save_method
    manifest = Manifest.read(TUNED_DIR)
    if manifest.method == "lora" and save_method != "lora":  # merged into the base model's weights
        require_model_declared(manifest.base_model, ["merge"])
    runtime = inference_runtime(manifest, probe())
    backends.get(runtime)  # first: Unsloth patches transformers, TRL and PEFT before they load
    with atomic_dir(MERGED_DIR) as staging:
        backends.merge(kinds.get(manifest.kind), manifest, runtime, TUNED_DIR, staging, save_method)
    print(f"{save_method} ({runtime.backend}) -> {MERGED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
