"""Models by Hugging Face Hub id: ``load_model("user/repo")`` fetches the model folder (config.json, safetensors, EMA
weights, card, tokenizer/) through ``huggingface_hub.snapshot_download``, which keeps the Hub's local cache and
honours ``HF_HUB_OFFLINE``; ``push_to_hub`` uploads a saved folder as it is. The folder format is visgen's own, so
every checkpoint already written loads unchanged, from disk or from the Hub."""

from __future__ import annotations

import re
from pathlib import Path

from visgen.checkpoint import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ASSETS = Path(__file__).parent / "assets"  # the models bundled with the package: ``asset:NAME``


def is_hub_id(ref: str) -> bool:
    """``user/repo`` that is not an existing local path."""
    return bool(_REPO_ID.match(str(ref))) and not Path(ref).expanduser().exists()


def resolve(ref: str | Path, revision: str | None = None) -> Path:
    """A local model folder for ``ref``: the path itself, or the Hub snapshot of a repo id (from the cache when it
    is there, downloaded otherwise), or for ``asset:NAME`` the bundled model's folder."""
    if str(ref).startswith("asset:"):
        return ASSETS / str(ref)[len("asset:") :]
    if not is_hub_id(str(ref)):
        return Path(ref).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id=str(ref), revision=revision))
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{ref}: no such local folder, not in the local Hugging Face cache, and the Hub cannot be reached (offline, "
            "or HF_HUB_OFFLINE=1). "
            f"Where there is a network run `huggingface-cli download {ref}` (or unset HF_HUB_OFFLINE), or pass the "
            "model's local folder"
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise CheckpointError(f"{ref}: no such model on the Hub (or it is private: log in with `hf auth login`)") from e


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Upload a saved model folder to ``repo_id`` (created if needed); returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a visgen model folder (no config.json); save or train one first")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=message or "visgen model")
    except OfflineModeIsEnabled as e:
        raise CheckpointError(
            f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it where there is a network"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"cannot push to {repo_id}: {e} (log in with `hf auth login`, check the network)") from e
    return str(url)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``visgen push DIR user/repo [--private]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=prog, description="Upload a saved visgen model folder to the Hugging Face Hub.")
    p.add_argument("directory")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    try:
        print(push_to_hub(args.directory, args.repo_id, private=args.private))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
