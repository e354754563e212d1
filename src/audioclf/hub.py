"""The Hugging Face Hub: upload a model directory, or an ONNX export, as a model repository.

`push` is the one way audioclf uploads: `audioclf push` and `audioclf train --push-to-hub` both call it. It asks the
Hub who the token belongs to before anything else (`check_access`), so that offline mode, a missing token (from
`HF_TOKEN` or `hf auth login`, as huggingface_hub finds it), an unreachable Hub or a refused token each end at once in
one HubError line. Then it creates the repository (if it is new) and the branch (if one is asked for) and uploads the
directory's files, its model card (README.md) with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audioclf.errors import HubError, ModelError
from audioclf.files import CARD_FILE, METRICS_FILE, MODEL_CONFIG_FILE, ONNX_MODEL_FILE

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", ONNX_MODEL_FILE)  # one of them makes a directory a model
HIDDEN = [".*", "*/.*"]  # upload_folder patterns (fnmatch on paths in the folder): temporary and hidden files stay
DEFAULT_COMMIT_MESSAGE = "Upload audioclf model"
PROBE_TIMEOUT_SECONDS = 5.0  # one quick request before a download, whose own retries take ~50 s when offline


@dataclass(frozen=True)
class PushResult:
    """What was uploaded where: the repository (owner/name), its branch, the commit's address and the files."""

    repo_id: str
    revision: str
    commit_url: str
    files: tuple[str, ...]


def unreachable_reason() -> str | None:
    """Why the Hub cannot be reached, or None; None in offline mode too, where downloads come from the local cache.
    The one check before loading a Hub model or dataset, so that no Hub id waits through the libraries' retries."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return None
    try:
        huggingface_hub.utils.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=PROBE_TIMEOUT_SECONDS)
    except Exception as e:  # any transport failure means the same thing here
        return f"{type(e).__name__}: {e}"
    return None


def check_access():
    """A Hub client (huggingface_hub.HfApi) with the user's token, and the name of the account it belongs to; a
    HubError, in one line, where the Hub cannot be used: offline mode, no token, the Hub unreachable or the token
    refused."""
    import huggingface_hub  # here, not at the top: the command line's --help imports this module

    if huggingface_hub.constants.HF_HUB_OFFLINE:  # read at import, as huggingface_hub itself does
        raise HubError("the Hugging Face Hub is off: HF_HUB_OFFLINE is set; unset it to upload")
    token = huggingface_hub.get_token()
    if not token:
        raise HubError("not logged in to the Hugging Face Hub: set HF_TOKEN to a token with write access, or run "
                       "`hf auth login`")
    api = huggingface_hub.HfApi(token=token)
    try:
        account = api.whoami()
    except Exception as e:  # HTTP errors, or whatever the network library raises when the Hub cannot be reached
        raise HubError(f"cannot use the Hugging Face Hub: {_first_line(e)}") from e
    return api, account.get("name", "?")


def uploaded_files(directory: Path) -> tuple[str, ...]:
    """The files of `directory` that an upload sends, as paths in it: all but hidden ones (HIDDEN)."""
    return tuple(sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)))


def push(directory: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None) -> PushResult:
    """Upload the model directory (or ONNX export) `directory` to the Hub model repository `repo_id` ("owner/name",
    or "name" for one under the token's account), creating it (private with `private`) if it does not exist, on the
    branch `revision` (created from main if new; default main). A directory without a model card gets one first."""
    directory = Path(directory)
    if not (directory / MODEL_CONFIG_FILE).is_file() or not any((directory / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"{directory}: not a model directory to push (it needs {MODEL_CONFIG_FILE} and one of "
                         f"{', '.join(WEIGHT_FILES)}); give the --output of `audioclf train` or `audioclf export onnx`")
    api, _ = check_access()
    if not (directory / CARD_FILE).is_file() and (directory / METRICS_FILE).is_file():
        from audioclf.card import write_card

        write_card(directory)  # trained before cards existed; never replaces a card someone may have edited
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=directory, revision=revision,
                                   commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
                                   ignore_patterns=list(HIDDEN))  # a copy: upload_folder adds its own to it
    except Exception as e:  # as in check_access: the Hub's refusals and the network's failures alike
        raise HubError(f"upload to {repo_id} failed: {_first_line(e)}") from e
    return PushResult(repo, revision or "main", str(getattr(commit, "commit_url", commit)), uploaded_files(directory))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
