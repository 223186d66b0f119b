"""The CLI: every command documented with an example, errors without tracebacks."""
import json

import pytest
from click.testing import CliRunner

import cli

from helpers import make_records, write_fasta


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    top = runner.invoke(cli.main, ["--help"])
    assert top.exit_code == 0
    for name in cli.main.commands:
        assert name in top.output
        result = runner.invoke(cli.main, [name, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, name
        assert "python cli.py " + name in result.output, name


def test_models_lists_registry():
    result = CliRunner().invoke(cli.main, ["models", "--json"])
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["small-32k"]["l_max"] == 32770 and rows["large-1m"]["n_layer"] == 8
    assert rows["tiny-1k"]["hub_id"] == "LongSafari/hyenadna-tiny-1k-seqlen-hf"


def test_embed_and_info_end_to_end(tmp_path):
    fasta = write_fasta(tmp_path / "x.fa", make_records(5))
    runner = CliRunner()
    result = runner.invoke(cli.main, ["embed", "--model", "tiny-1k", "--random-init", "--input",
                                      str(fasta), "--out", str(tmp_path / "x.zarr"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output and "5 rows" in result.output
    info = runner.invoke(cli.main, ["info", str(tmp_path / "x.zarr")])
    summary = json.loads(info.output)
    assert summary["complete"] is True and summary["n_rows"] == 5 and summary["random_init"]


@pytest.mark.parametrize("args,message", [
    (["embed", "--model", "small-32k", "--input", "x.fa", "--out", "o.zarr"], "unreachable"),
    (["embed", "--model", "tiny-1k", "--random-init", "--input", "missing.csv", "--seq-col", "s",
      "--out", "o.zarr"], "no such file"),
    (["embed", "--model", "tiny-1k", "--random-init", "--input", "bad.fa", "--out", "o.zarr"],
     "invalid character"),
    (["embed", "--model", "tiny-1k", "--random-init", "--input", "bad.fa", "--out", "o.zarr",
      "--position-window", "5:2", "--per-position"], "START < END"),
    (["info", "nowhere.zarr"], "no such cache"),
])
def test_errors_are_messages_not_tracebacks(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.fa").write_text(">r1\nACGTZ\n")
    (tmp_path / "x.fa").write_text(">r1\nACGT\n")
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
