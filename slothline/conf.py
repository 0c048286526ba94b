"""params.yaml and conf/: `dvc exp run` composes params.yaml from conf/config.yaml and the kind's defaults in
conf/kind/<kind>.yaml with Hydra (DVC's `hydra.enabled`), applying its `-S` overrides. A setting written into
params.yaml by hand lasts until the next `dvc exp run` (with or without `-S`) recomposes the file, so check_params names every
such setting (`drift`), with where to keep it."""

from pathlib import Path

CONF_DIR = Path("conf")


def compose(kind: str, overrides: list[str] = (), conf_dir: Path = CONF_DIR) -> dict:
    """params.yaml as `dvc exp run -S kind=<kind> -S <overrides>` writes it, as a dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
        config = hydra_compose(config_name="config", overrides=[f"kind={kind}", *overrides])
    return OmegaConf.to_container(config, resolve=True)


def drift(params: dict) -> list[str]:
    """The dotted keys whose value in `params` (params.yaml as read) differs from what conf/ composes for its
    kind; [] where there is no conf/ or the kind has no defaults there."""
    kind = params.get("kind")
    if not (CONF_DIR / "kind" / f"{kind}.yaml").is_file():
        return []
    composed = compose(kind)
    return sorted(key for key in set(flat(params)) | set(flat(composed))
                  if flat(params).get(key, "absent") != flat(composed).get(key, "absent"))


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} of a nested dict (lists are values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
