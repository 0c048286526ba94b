"""merge: fold the LoRA adapter into the base weights (`merge.save_method`).

Outs: models/merged/, a Hugging Face directory (safetensors, tokenizer, chat template) that plain
`AutoModelForCausalLM.from_pretrained` loads: merged_16bit or merged_4bit; `lora` keeps the adapter.
"""

from pathlib import Path

from stages.lib.errors import SlothlineError, run_stage
from stages.lib.outputs import atomic_dir
from stages.lib.params import load_params

ADAPTER_DIR = Path("models/adapter")
MERGED_DIR = Path("models/merged")


def main() -> None:
    params = load_params()
    if not ADAPTER_DIR.is_dir():
        raise SlothlineError(f"{ADAPTER_DIR}: missing; run `dvc repro train` first")
    from stages.lib import backends  # imports unsloth (when used) before transformers
    from stages.lib.export import merge_adapter

    runtime = backends.choose_runtime(params)
    with atomic_dir(MERGED_DIR) as staging:
        merge_adapter(runtime, params, ADAPTER_DIR, staging)
    print(f"{params.merge.save_method} ({runtime.backend}) -> {MERGED_DIR}/")


if __name__ == "__main__":
    run_stage(main)
