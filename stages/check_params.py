"""check_params: validate the whole params.yaml. It depends on every param and writes nothing, so a
misspelled section (`evalute:`), which no other stage reads, still fails `dvc repro` loudly; so do a
param the model's kind cannot apply and a setting that only a later stage would refuse, before anything
trains."""

from stages.lib import kinds
from stages.lib.errors import run_stage
from stages.lib.params import PARAMS_FILE, check_pipeline_needs, load_params


def main() -> None:
    params = load_params()
    check_pipeline_needs(params)
    task = kinds.for_params(params)  # the model's kind, which refuses params it cannot apply
    kinds.check_export_formats(task, params.export.formats)
    print(f"{PARAMS_FILE}: valid")


if __name__ == "__main__":
    run_stage(main)
