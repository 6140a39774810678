"""docs/serving.md's settings table is generated from serving.config.ServingConfig: a test fails when they drift."""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

from serving.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    TABLE_END,
    TABLE_START,
    ServingConfig,
    load_config,
    main,
    settings_markdown,
    with_settings_table,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of each body row (a `\\|` inside a cell is not a separator)."""
    rows = []
    for line in markdown.strip().splitlines()[2:]:
        cells = line.replace("\\|", "\0").strip().strip("|").split("|")
        rows.append([cell.strip().replace("\0", "|") for cell in cells])
    return rows


def test_serving_doc_holds_the_table_generated_from_the_code():
    doc = DOC.read_text()
    assert doc.count(TABLE_START) == 1 and doc.count(TABLE_END) == 1
    stale = "docs/serving.md is stale: run python -m serving.config --write docs/serving.md"
    assert with_settings_table(doc) == doc, stale


def test_every_setting_has_one_row_with_its_type_variable_and_description():
    rows = table_rows(settings_markdown())
    assert [row[0] for row in rows] == [f"`{f.name}`" for f in fields(ServingConfig)]
    for row, setting in zip(rows, fields(ServingConfig)):
        assert len(row) == 5, row
        assert row[1] == f"`{setting.type}`"
        assert row[3] == f"`{ENV_PREFIX}{setting.name.upper()}`"
        assert len(row[4]) > 10 and "\n" not in row[4], f"{setting.name} needs a description in metadata['help']"


def test_documented_variables_and_defaults_are_what_load_config_reads(tmp_path):
    """Each row's variable, given the row's default, must load to the code's default (no serving.toml involved)."""
    empty_toml = tmp_path / "serving.toml"
    empty_toml.write_text("[serving]\n")
    defaults = ServingConfig()
    for name, _, default, variable, _ in table_rows(settings_markdown()):
        name, variable = name.strip("`"), variable.strip("`")
        if default == "empty":
            assert getattr(defaults, name) in ("", [])
            continue
        value = default.strip("`")
        loaded = load_config({CONFIG_ENV: str(empty_toml), variable: value})
        assert getattr(loaded, name) == getattr(defaults, name), (name, value)
    changed = load_config({CONFIG_ENV: str(empty_toml), f"{ENV_PREFIX}MAX_IMAGES": "7"})
    assert changed.max_images == 7  # the variable really reaches the setting


def test_write_regenerates_a_stale_table(tmp_path, capsys):
    doc = tmp_path / "serving.md"
    shutil.copy(DOC, doc)
    stale = DOC.read_text().replace("`GALAXYVIT_MAX_IMAGES`", "`GALAXYVIT_OLD_NAME`")
    doc.write_text(stale)
    assert main(["--write", str(doc)]) == 0
    assert doc.read_text() == DOC.read_text()
    assert capsys.readouterr().out == ""
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == settings_markdown()
