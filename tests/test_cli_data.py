import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audioclf.cli import app
from audioclf.data import DEMO_MANIFEST
from audioclf.testing import make_folder_dataset, make_manifest_dataset

runner = CliRunner()
needs_demo = pytest.mark.skipif(not DEMO_MANIFEST.is_file(), reason="the demo data has not been generated yet")


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "folder", labels=("low", "high", "noise"), clips_per_label=4, seconds=0.2)


def test_inspect_json_counts_clips(folder):
    result = runner.invoke(app, ["data", "inspect", str(folder), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # exactly one JSON object
    assert report["n_clips"] == 12
    assert report["labels"] == {"high": 4, "low": 4, "noise": 4}
    assert report["sampling_rates"] == {"8000": 12}
    assert report["durations_seconds"]["mean"] == pytest.approx(0.2)
    assert report["problems"] == []


def test_inspect_reports_a_corrupt_clip_and_exits_0(folder):
    bad = folder / "low" / "broken.wav"
    bad.write_text("not audio")

    as_json = runner.invoke(app, ["data", "inspect", str(folder), "--json"])
    human = runner.invoke(app, ["data", "inspect", str(folder)])

    assert as_json.exit_code == 0 and human.exit_code == 0
    report = json.loads(as_json.stdout)
    assert report["n_clips"] == 12
    assert [p["path"] for p in report["problems"]] == [str(bad.resolve())]
    assert "not a readable audio file" in report["problems"][0]["reason"]
    assert f"{bad.resolve()}: not a readable audio file" in human.stdout
    assert "1 problem" in human.stdout and "noise" in human.stdout


def test_inspect_strict_fails_on_the_corrupt_clip_in_one_line(folder):
    bad = folder / "high" / "broken.wav"
    bad.write_bytes(b"")

    result = runner.invoke(app, ["data", "inspect", str(folder), "--strict"])

    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {bad.resolve()}: empty file (0 bytes)"
    assert "Traceback" not in result.output


def test_bad_column_flag_is_a_one_line_error_listing_columns(tmp_path):
    manifest = make_manifest_dataset(tmp_path / "m", clips_per_label=2, seconds=0.2)

    result = runner.invoke(app, ["data", "inspect", str(manifest), "--label-column", "intent"])

    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --label-column 'intent' is not a column of")
    assert lines[0].endswith("available columns: path, label, speaker")


@needs_demo
def test_demo_path_prints_the_manifest():
    result = runner.invoke(app, ["data", "demo-path"])

    assert result.exit_code == 0
    assert Path(result.stdout.strip()) == DEMO_MANIFEST
    assert Path(result.stdout.strip()).is_file()


@needs_demo
def test_inspect_demo_data_has_14_labels():
    result = runner.invoke(app, ["data", "inspect", str(DEMO_MANIFEST), "--group-column", "voice", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["labels"]) == 14
    assert report["problems"] == []
    assert report["sampling_rates"] == {"8000": report["n_clips"]}
