"""hub.py, `audioclf push` and `train --push-to-hub`, without the network: huggingface_hub's own client runs its
upload_folder as it is (listing and filtering the files, checking the card), with the Hub's side replaced by a
stand-in that records what would be sent. Offline, without a token, or with the Hub out of reach, it fails at once
in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.hf_api
import pytest
from huggingface_hub import CommitInfo, ModelCard, RepoUrl
from typer.testing import CliRunner

from audioclf.cli import app
from audioclf.config import DataSpec, ModelOptions
from audioclf.hub import uploaded_files
from audioclf.testing import make_folder_dataset, tiny_train_options
from audioclf.train import train

runner = CliRunner()
ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: a request the stand-in does not answer fails at once, here
HUB = "https://huggingface.co"  # only in the addresses the stand-in answers with
ACCOUNT = "someone"


class RecordingHub(huggingface_hub.HfApi):
    """huggingface_hub's HfApi with every call that would reach the Hub answered here and recorded in `sent`."""

    sent: list[tuple[str, dict]] = []

    def __init__(self, token=None, **kwargs):
        super().__init__(endpoint=ENDPOINT, token=token)
        self.sent.append(("client", {"token": token}))

    def whoami(self, token=None, **kwargs):
        self.sent.append(("whoami", {}))
        return {"name": ACCOUNT}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        full = repo_id if "/" in repo_id else f"{ACCOUNT}/{repo_id}"
        self.sent.append(("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}))
        return RepoUrl(f"{HUB}/{full}")

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        self.sent.append(("create_branch", {"repo_id": repo_id, "branch": branch, "exist_ok": exist_ok}))

    def _validate_yaml(self, content, *, repo_type=None, token=None):  # the Hub checks a card's metadata
        self.sent.append(("validate_card", {"card": content}))
        ModelCard(content)  # here, huggingface_hub's own parser does

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.sent.append(("commit", {"repo_id": repo_id, "revision": revision, "message": commit_message,
                                     "files": files}))
        return CommitInfo(commit_url=f"{HUB}/{repo_id}/commit/0123abc", commit_message=commit_message,
                          commit_description="", oid="0123abc")

    @classmethod
    def calls(cls, name: str) -> list[dict]:
        return [args for called, args in cls.sent if called == name]


class UnreachableHub(RecordingHub):
    def whoami(self, token=None, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")


@pytest.fixture
def hub(monkeypatch):
    RecordingHub.sent = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)  # the one-commit upload path
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return RecordingHub


@pytest.fixture
def logged_out(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("tones"), clips_per_label=6, seconds=0.5, sampling_rate=8000)


@pytest.fixture(scope="module")
def model_dir(tones, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "tones"
    train(DataSpec(data=str(tones)), ModelOptions(model_config="tiny-wav2vec2"), tiny_train_options(epochs=1), output,
          progress=False, echo=lambda line: None)
    return output


def test_push_uploads_the_directory_and_its_card(hub, model_dir, tmp_path):
    directory = Path(shutil.copytree(model_dir, tmp_path / "tones"))
    (directory / ".tones.123.tmp").write_text("half written")  # what an interrupted write leaves: never sent
    result = runner.invoke(app, ["push", str(directory), "tone-model", "--private", "--revision", "first-try",
                                 "--commit-message", "Tones, 1 epoch"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"uploaded {len(uploaded_files(directory))} files to {ACCOUNT}/tone-model "
                                     f"(first-try): {HUB}/{ACCOUNT}/tone-model/commit/0123abc")

    assert hub.calls("client") == [{"token": "hf_test_token"}]
    assert hub.calls("create_repo") == [{"repo_id": "tone-model", "private": True, "exist_ok": True}]
    assert hub.calls("create_branch") == [{"repo_id": f"{ACCOUNT}/tone-model", "branch": "first-try",
                                           "exist_ok": True}]
    (commit,) = hub.calls("commit")
    assert (commit["repo_id"], commit["revision"], commit["message"]) == (f"{ACCOUNT}/tone-model", "first-try",
                                                                          "Tones, 1 epoch")
    assert set(commit["files"]) == {"README.md", "confusion.png", "config.json", "model.safetensors", "labels.txt",
                                    "preprocessor_config.json", "metrics.json", "train_config.json"}
    assert tuple(sorted(commit["files"])) == uploaded_files(directory)
    assert commit["files"]["model.safetensors"] == (directory / "model.safetensors").read_bytes()
    # the card went as it is, and its metadata is what the Hub is asked to check
    (checked,) = hub.calls("validate_card")
    assert checked["card"] == commit["files"]["README.md"].decode() == (directory / "README.md").read_text()
    card = ModelCard(checked["card"])
    accuracy = next(r for r in card.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == pytest.approx(json.loads((directory / "metrics.json").read_text())["test"]["accuracy"],
                                                  abs=1e-4)


def test_push_to_main_creates_no_branch_and_a_directory_without_a_card_gets_one(hub, model_dir, tmp_path):
    directory = Path(shutil.copytree(model_dir, tmp_path / "tones"))
    (directory / "README.md").unlink()
    result = runner.invoke(app, ["push", str(directory), "me/tones"])
    assert result.exit_code == 0, result.output
    assert hub.calls("create_branch") == [] and hub.calls("create_repo")[0]["private"] is False
    (commit,) = hub.calls("commit")
    assert commit["revision"] is None and commit["message"] == "Upload audioclf model"
    assert "README.md" in commit["files"] and (directory / "README.md").is_file()


def test_an_onnx_export_is_pushed_with_its_card(hub, model_dir, tmp_path):
    from audioclf.export import export_onnx

    export_onnx(model_dir, tmp_path / "tones-onnx")
    result = runner.invoke(app, ["push", str(tmp_path / "tones-onnx"), "me/tones-onnx"])
    assert result.exit_code == 0, result.output
    (commit,) = hub.calls("commit")
    assert {"model.onnx", "onnx_export.json", "README.md", "config.json"} <= set(commit["files"])
    assert "onnx" in ModelCard(commit["files"]["README.md"].decode()).data.tags


def test_without_a_token_push_fails_at_once_in_one_line(hub, logged_out, model_dir):
    result = runner.invoke(app, ["push", str(model_dir), "me/tones"])
    assert result.exit_code == 1
    assert result.output == ("error: not logged in to the Hugging Face Hub: set HF_TOKEN to a token with write "
                             "access, or run `hf auth login`\n")
    assert hub.sent == []


def test_offline_push_fails_at_once_in_one_line(hub, model_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = runner.invoke(app, ["push", str(model_dir), "me/tones"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith("error: the Hugging Face Hub is off: HF_HUB_OFFLINE is set")
    assert hub.sent == []


def test_an_unreachable_hub_fails_at_once_in_one_line(hub, model_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", UnreachableHub)
    result = runner.invoke(app, ["push", str(model_dir), "me/tones"])
    assert result.exit_code == 1
    assert result.output == ("error: cannot use the Hugging Face Hub: ConnectionError: [Errno -2] Name or service "
                             "not known\n")
    assert hub.calls("commit") == []


def test_push_refuses_what_is_not_a_model_directory(hub, tmp_path):
    (tmp_path / "notes").mkdir()
    result = runner.invoke(app, ["push", str(tmp_path / "notes"), "me/notes"])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "not a model directory" in result.output
    assert hub.sent == []


def test_train_push_to_hub_uploads_the_finished_directory_the_same_way(hub, tones, tmp_path):
    output = tmp_path / "pushed"
    result = runner.invoke(app, ["train", "--data", str(tones), "--model-config", "tiny-wav2vec2", "--output",
                                 str(output), "--epochs", "1", "--push-to-hub", "--hub-model-id", "me/pushed", "-q"])
    assert result.exit_code == 0, result.output
    assert f"pushed {len(uploaded_files(output))} files to me/pushed" in result.output
    (commit,) = hub.calls("commit")
    assert commit["repo_id"] == "me/pushed" and tuple(sorted(commit["files"])) == uploaded_files(output)
    assert hub.calls("whoami") == [{}, {}]  # checked before training, and again by the upload itself


def test_train_push_to_hub_without_a_token_fails_before_training(hub, logged_out, tones, tmp_path):
    output = tmp_path / "never"
    result = runner.invoke(app, ["train", "--data", str(tones), "--model-config", "tiny-wav2vec2", "--output",
                                 str(output), "--push-to-hub", "-q"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith("error: --push-to-hub: not logged in to the Hugging Face Hub")
    assert not output.exists() and not output.with_name("never.partial").exists()
