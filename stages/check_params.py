"""check_params: validate the whole params.yaml. It depends on every param and writes nothing, so a
misspelled section (`evalute:`), which no other stage reads, still fails `dvc repro` loudly."""

from stages.lib.errors import run_stage
from stages.lib.params import PARAMS_FILE, load_params


def main() -> None:
    load_params()
    print(f"{PARAMS_FILE}: valid")


if __name__ == "__main__":
    run_stage(main)
