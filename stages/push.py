"""push: upload what `export.push_to_hub` names (the adapter, the merged model, the GGUF files) to the Hugging
Face Hub in one commit, and print the commit's URL. Not set (the default): nothing is sent.

Writes nothing: DVC reruns it only when the folders it may upload or `export.push_to_hub` change.
"""

from stages.lib.errors import run_stage
from stages.lib.params import load_params


def main() -> None:
    settings = load_params().export.push_to_hub
    if settings is None:
        print("export.push_to_hub: not set; nothing pushed")
        return
    from stages.lib import hub  # huggingface_hub's upload machinery, only when pushing

    url = hub.push(settings)
    print(f"pushed {', '.join(settings.what)} to {settings.repo_id}: {url}")


if __name__ == "__main__":
    run_stage(main)
