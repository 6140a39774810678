import json
import re

import pytest

from app.cli import main as cli_main
from galaxyvit.paths import GZ2_SPLITS
from tests.conftest import SEED_RUNS
from training import class_weights
from training.models import run_params
from training.registry import get_run, load_runs


def seed_table_columns() -> set[tuple[str, str]]:
    """(family, study id) of every column of every table in the study's run table."""
    family_of = {
        "ViT hyperparameters": "vit",
        "Pre-Trained ViT-Base (HuggingFace)": "vitbase",
        "Linformer hyperparameters": "linformer",
    }
    columns = set()
    family = None
    for line in SEED_RUNS.read_text().splitlines():
        if line.startswith("## "):
            family = family_of[line[3:].strip()]
        elif line.startswith("| Params"):
            for cell in line.strip().strip("|").split("|")[1:]:
                columns.add((family, cell.strip().strip("#")))
    return columns


def test_every_study_column_is_a_run():
    runs = load_runs()
    registered = {(r.family, r.study_id) for r in runs.values()}
    missing = seed_table_columns() - registered
    assert not missing
    assert len(runs) == len({r.id for r in runs.values()})


def test_reported_parameter_counts_come_out_exactly():
    checked = 0
    for run in load_runs().values():
        if run.reported_params is not None:
            assert run_params(run) == run.reported_params, run.id
            checked += 1
    assert checked >= 70


@pytest.mark.parametrize(
    "run_id, params",
    [
        ("vit-102721", 6_953_992),
        ("vit-102821-B", 13_907_208),
        ("linformer-arXiv", 2_785_416),
        ("linformer-010522", 455_208),
        ("vitbase-010822B", 85_804_808),
        ("vitbase-121121", 6_152),
    ],
)
def test_study_parameter_counts(run_id, params):
    assert run_params(get_run(run_id)) == params


def test_transcription_corrections_are_recorded():
    assert get_run("vit-121021").depth == 12
    for sid in ["121021", "121121", "121221", "121321", "122921", "122921B"]:
        run = get_run(f"linformer-{sid}")
        assert run.shared_kv is True
        assert any("shared_kv" in c for c in run.corrections)
    assert get_run("linformer-122921").patch_size == 28
    assert get_run("linformer-122921B").patch_size == 16


def test_same_study_id_in_several_tables_gets_unique_ids():
    ids = [r.id for r in load_runs().values() if r.study_id == "121221"]
    assert sorted(ids) == ["linformer-121221", "vit-121221", "vitbase-121221"]


def test_unknown_run_suggests_close_ids():
    with pytest.raises(KeyError, match="linformer-010522B"):
        get_run("linformer-01522B")


def test_reported_figures_and_notes():
    run = get_run("linformer-arXiv")
    assert (run.reported_train_acc, run.reported_valid_acc, run.reported_test_acc) == (81.93, 80.35, 80.55)
    assert any("early-stopped" in n for n in run.notes)
    assert get_run("vit-110121").reported_test_acc is None
    assert any("bad" in n for n in get_run("vit-110121").notes)


def test_runs_json_cli(capsys):
    assert cli_main(["runs", "--json", "--family", "linformer"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["family"] for row in rows} == {"linformer"}
    for row in rows:
        assert {"id", "family", "params", "reported_params", "reported_test_acc"} <= set(row)
        if row["reported_params"] is not None:
            assert row["params"] == row["reported_params"]


def test_runs_table_cli(capsys):
    assert cli_main(["runs"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"linformer-010522B\s+linformer", out)
    assert "6,953,992" in out and " !" not in out


def test_inverse_frequency_matches_study_on_gz2_train():
    import csv
    from collections import Counter

    with open(GZ2_SPLITS / "gz2_train.csv") as f:
        counts = Counter(int(row["label1"]) for row in csv.DictReader(f))
    weights = class_weights.resolve("inverse_frequency", [counts[c] for c in range(8)])
    assert [round(w, 2) for w in weights] == list(class_weights.STUDY_PRESETS["study_inverse"])


@pytest.mark.parametrize("spec", ["1,1,1,1,1,1,1,0", "1,1,1,1,1,1,1,-2", "heavy", "1,,2"])
def test_bad_class_weights_are_clear_errors(spec):
    with pytest.raises(ValueError, match="class weights"):
        class_weights.parse(spec)


def test_custom_class_weights():
    counts = [10] * 8
    assert class_weights.resolve("1,1,2,1,1,1,3,9", counts) == (1, 1, 2, 1, 1, 1, 3, 9)
    with pytest.raises(ValueError, match="exactly 8 values"):
        class_weights.resolve("1,2,3", counts)
    assert class_weights.resolve("1,2,3", [4, 4, 4]) == (1, 2, 3)
