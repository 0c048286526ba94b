"""push: upload what the `push` params name (the adapter, the merged model, the GGUF or ONNX files) to the
Hugging Face Hub in one commit, and print the commit's URL. Not set (the default): nothing is sent.

Writes nothing: DVC reruns it only when the folders it may upload or the `push` params change.
"""

from slothline.errors import run_stage
from slothline.params import load_params


def main() -> None:
    settings = load_params().push
    if settings is None:
        print("push: not set; nothing pushed")
        return
    from slothline import hub  # huggingface_hub's upload machinery, only when pushing

    url = hub.push(settings)
    print(f"pushed {', '.join(settings.what)} to {settings.repo_id}: {url}")


if __name__ == "__main__":
    run_stage(main)
