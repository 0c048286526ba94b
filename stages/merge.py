"""merge: fold the LoRA adapter into the base weights (`merge.save_method`).

Outs: models/merged/, a Hugging Face directory (safetensors, processor, chat template, manifest.json)
that plain transformers loads with the kind's auto class: merged_16bit or merged_4bit; `lora` keeps
the adapter.
"""

from stages.lib import kinds
from stages.lib.artifacts import ADAPTER_DIR, MERGED_DIR, Manifest
from stages.lib.errors import run_stage
from stages.lib.outputs import atomic_dir
from stages.lib.params import load_params
from stages.lib.runtime import for_inference, probe


def main() -> None:
    save_method = load_params().merge.save_method
    manifest = Manifest.read(ADAPTER_DIR)
    runtime = for_inference(manifest, probe())
    from stages.lib import backends  # imports unsloth (when used) before transformers

    with atomic_dir(MERGED_DIR) as staging:
        backends.merge(kinds.get(manifest.kind), manifest, runtime, ADAPTER_DIR, staging, save_method)
    print(f"{save_method} ({runtime.backend}) -> {MERGED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
