"""check_params: validate the whole params.yaml against its kind, and refuse before anything trains what a
later stage would. It depends on every param, so a misspelled section (`evalute:`), which no other stage
reads, still fails `dvc repro` loudly. Out: metrics/params_check.json, the same for every valid params.yaml
of a kind; prepare depends on it, so `dvc repro <stage>` checks params.yaml before anything runs. It also
names the settings params.yaml holds beyond what conf/ composes, which the next `dvc exp run` would drop."""

import os

import yaml

from slothline import conf, kinds
from slothline.artifacts import PARAMS_CHECK, PARAMS_FILE, write_json
from slothline.errors import run_stage
from slothline.params import load_params


def main() -> None:
    params = load_params()
    kinds.check(kinds.get(params.kind), params)
    hand_edits = [] if "DVC_EXP_NAME" in os.environ else conf.drift(yaml.safe_load(PARAMS_FILE.read_text()))
    if hand_edits:
        print(f"note: {PARAMS_FILE} differs from what {conf.CONF_DIR}/ composes for {params.kind} at "
              f"{', '.join(hand_edits)}; the next `dvc exp run` recomposes {PARAMS_FILE} from "
              f"{conf.CONF_DIR}/ and drops them: keep them in {conf.CONF_DIR}/config.yaml or "
              f"{conf.CONF_DIR}/kind/{params.kind}.yaml, or pass them as -S overrides")
    write_json(PARAMS_CHECK, {"kind": params.kind, "valid": True})
    print(f"{PARAMS_FILE}: valid for {params.kind} models")


if __name__ == "__main__":
    run_stage(main)
