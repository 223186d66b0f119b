"""Stage one's commands: models, show-model, embed (registered on the group in cli.py)."""
from __future__ import annotations

import json
import os

import click

from cache.folders import check_out_folder, separate

from . import REGISTRY
from .cli_options import (compose, device_option, input_options, model_options, on_long_option,
                          packs_option, pair_options, parse_window, precision_option, quiet_option,
                          read_pairs_reporting, renamed, say, site_window_option,
                          special_tokens_option, user_errors)
from .inputs import record_reader
from .pooling import POOLINGS
from .runner import EmbedOptions, run_embed


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json):
    """List the named models: architecture, context and hub id.

    \b
    Example:
      python cli.py models
    """
    rows = [{"name": s.name, "d_model": s.config.d_model, "n_layer": s.config.n_layer,
             "l_max": s.config.l_max, "context_nt": s.context, "hub_id": s.hub_id,
             "description": s.description} for s in REGISTRY.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<15}{'d_model':>8}{'layers':>7}{'l_max':>10}  {'hub id':<46}description")
    for r in rows:
        click.echo(f"{r['name']:<15}{r['d_model']:>8}{r['n_layer']:>7}{r['l_max']:>10}  "
                   f"{r['hub_id']:<46}{r['description']}")


@click.command("show-model")
@model_options
def show_model(loaded):
    """Load a model and print where it came from, its weights hash and configuration.

    Useful to check local files or the hub cache before a long run.

    \b
    Examples (a registry name, a hub id, a local -hf folder or weights.ckpt):
      python cli.py show-model --model small-32k
      python cli.py show-model --model tiny-1k --random-init
    """
    info = loaded.describe()
    info["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    click.echo(json.dumps(info, indent=2))


embed_output_options = compose(
    click.option("--out", required=True, type=click.Path(), help="Zarr cache to write (a folder)."),
    renamed("--label", "label_cols", old=["--label-col"], multiple=True,
            help="Label column to carry into the cache (repeatable)."),
    click.option("--pool", "pools", multiple=True, type=click.Choice(POOLINGS), default=["mean"],
                 show_default=True, help="Pooling over real tokens (repeatable)."),
    click.option("--per-position", is_flag=True, help="Also store per-position embeddings."),
    click.option("--position-window", "window",
                 help="Per-position token window START:END (0-based, end exclusive)."),
    click.option("--center-window", type=click.IntRange(1),
                 help="Per-position window of W tokens centred in each row."),
    click.option("--layer", type=int, default=None,
                 help="Hidden state: 0 embeddings, 1..n_layer blocks, -1 final output (default)."),
    click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
                 show_default=True, help="Storage dtype."),
    click.option("--rc", is_flag=True,
                 help="Also embed the reverse complement: pooled vectors are averaged with its; "
                      "with --per-position its states are stored too (positions/rc_values), as "
                      "finetune --cache --rc-augment reads them."),
    packs_option, special_tokens_option, on_long_option,
    click.option("--label-type", type=click.Choice(["auto", "numeric", "text"]), default="auto",
                 show_default=True, help="auto: numeric when every present value is a number; a "
                 "column of numbers with a few other values is an error naming them."),
    click.option("--missing-labels", type=click.Choice(["keep", "drop"]), default="keep",
                 show_default=True,
                 help="Rows whose --label is missing: keep them (NaN) or drop them (counted)."),
    click.option("--store-sequences/--no-store-sequences", default=True, show_default=True,
                 help="Keep the embedded text in the cache (the k-mer baseline needs it)."))

embed_run_options = compose(
    click.option("--batch-tokens", type=click.IntRange(1),
                 help="Tokens per batch (default: 16k on CPU; on CUDA where the rate plateaus, "
                      "2^28 / d_model, less when free GPU memory is short)."),
    click.option("--chunk-rows", type=click.IntRange(1), default=1024, show_default=True,
                 help="Rows per cache chunk (the unit of resuming)."),
    device_option, precision_option(),
    click.option("--overwrite", is_flag=True, help="Replace a cache made with other settings."),
    quiet_option,
    click.option("--compile", "compile_model", is_flag=True,
                 help="torch.compile the dense parts (the FFT stays float32); falls back with a "
                      "message where it cannot compile."))


@click.command()
@model_options
@input_options()
@embed_output_options
@embed_run_options
@pair_options
@site_window_option
@user_errors
def embed(loaded, input_path, fmt, seq_col, id_col, split, out, label_cols, window, pools,
          overwrite, quiet, pairs, site_window, compile_model, **options):
    """Embed sequences with a frozen backbone into a resumable Zarr cache.

    Killed or interrupted, the same command picks up where it stopped; on a complete cache
    it does nothing. Several GPUs: `torchrun --nproc-per-node N cli.py embed ...`.

    \b
    Examples (on the shipped examples/; tests/test_help_examples.py runs them):
      python cli.py embed --model small-32k --input examples/demo_new.fa --out new.zarr \\
          --pool mean --pool last
      python cli.py embed --model small-32k --input examples/demo_reads.parquet --seq-col reads \\
          --id-col sample_id --label pH --packs 4 --out ph.zarr
      python cli.py embed --model small-32k --input examples/demo_new.fa --per-position \\
          --center-window 64 --out windows.zarr
      python cli.py embed --model small-32k --input examples/demo_pairs.csv --ref-col REF_SEQ \\
          --alt-col ALT_SEQ --id-col ID --label donor --label acceptor --out pairs.zarr
      python cli.py embed --model small-32k --input examples/demo_variants.vcf \\
          --genome examples/demo_genome.fa --window 201 --out variants.zarr
    """
    out = os.path.normpath(out)  # 'x/..' names the folder it means, never creates x
    check_out_folder(out)
    separate(out, input_path, pairs.genome if pairs.given else None)
    options["truncation"] = options.pop("on_long")
    options = EmbedOptions(pools=tuple(dict.fromkeys(pools)), window=parse_window(window),
                           compile=compile_model, **options)
    table = None
    if pairs.given:
        from .variants import pair_records, pair_table

        found = read_pairs_reporting(input_path, pairs, id_col, label_cols, seq_col)
        records, table = (lambda: pair_records(found)), pair_table(found)
        options.site_window = site_window
    else:
        records = record_reader(input_path, fmt, seq_col, id_col, label_cols, split)
    run_embed(loaded, records, out, options, label_cols, overwrite=overwrite, progress=not quiet,
              say=say, pairs=table)


def register(group: click.Group):
    for command in (models, show_model, embed):
        group.add_command(command)
