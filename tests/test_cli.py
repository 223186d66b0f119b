"""The CLI: every command documented with an example, errors without tracebacks."""
import json

import click
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


def _visible_options(command):
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            shown = [o for o in param.opts if o not in getattr(param, "old", ())]
            yield param, shown[0]


def test_every_option_has_help_text():
    for name, command in cli.main.commands.items():
        for param, flag in _visible_options(command):
            assert param.help and param.help.strip(), f"{name} {flag} has no help text"


# One name per concept: the flag a concept goes by, and defaults that must agree where it recurs.
CONCEPT_FLAGS = {"input_path": "--input", "id_col": "--id-col", "labels_id_col": "--labels-id-col",
                 "seed": "--seed", "init_seed": "--init-seed", "device": "--device",
                 "labels": "--label", "label_cols": "--label", "labels_file": "--labels",
                 "split_col": "--split-col", "test_ids": "--test-ids", "task": "--task",
                 "model_spec": "--model", "fmt": "--format", "seq_col": "--seq-col"}
SHARED_DEFAULTS = ("--device", "--head", "--seed", "--init-seed", "--loss", "--format",
                   "--special-tokens", "--on-long", "--precision", "--labels-id-col", "--shift")


def test_shared_concepts_use_one_flag_with_one_default():
    flag_of_dest, dest_of_flag, defaults = {}, {}, {}
    for name, command in cli.main.commands.items():
        for param, flag in _visible_options(command):
            flag_of_dest.setdefault(param.name, set()).add(flag)
            dest_of_flag.setdefault(flag, set()).add(param.name)
            default = tuple(param.default) if isinstance(param.default, (list, tuple)) else param.default
            defaults.setdefault(flag, {})[name] = default
    for dest, flag in CONCEPT_FLAGS.items():
        assert flag_of_dest.get(dest, {flag}) == {flag}, (dest, flag_of_dest[dest])
    for dest, flags in flag_of_dest.items():
        assert len(flags) == 1, f"{dest} goes by several flags: {flags}"
    for flag in SHARED_DEFAULTS:
        seen = {d[0] if isinstance(d, tuple) else d for d in defaults[flag].values()}
        assert len(seen) == 1, f"{flag} defaults differ between commands: {defaults[flag]}"
    # the split seed and the random-init seed are two concepts, never one flag
    assert dest_of_flag["--seed"] == {"seed"} and dest_of_flag["--init-seed"] == {"init_seed"}


@pytest.mark.parametrize("command,old,new", [
    ("embed", "--label-col", "--label"), ("fit-head", "--id-col", "--labels-id-col"),
    ("finetune", "--train-seed", "--seed")])
def test_old_spellings_parse_but_are_hidden(command, old, new):
    cmd = cli.main.commands[command]
    param = next(p for p in cmd.params if old in p.opts)
    assert new in param.opts
    help_text = CliRunner().invoke(cli.main, [command, "--help"]).output
    assert new in help_text and f"{old} " not in help_text and f"{old}," not in help_text
    ctx = cmd.make_context(command, [old, "7"], resilient_parsing=True)
    assert ctx.params[param.name] in ("7", 7, ("7",))
