"""Command line for hyena-embed: a thin shell over the library (`python cli.py --help`)."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from cache.store import CacheError, describe
from hyena_embed import REGISTRY, ModelLoadError, load_model
from hyena_embed.inputs import FORMATS, InputError, record_reader
from hyena_embed.pooling import POOLINGS
from hyena_embed.runner import EmbedOptions, run_embed


def parse_window(text):
    if text is None:
        return None
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise click.BadParameter("use START:END, token positions, e.g. 100:200") from None
    if not 0 <= start < end:
        raise click.BadParameter("need 0 <= START < END")
    return start, end


def model_options(func):
    """--model and the options that say how to load it, shared by every command that needs one."""
    @click.option("--model", "model_spec", required=True,
                  help="Registry name (see `models`), hub repo id, local -hf folder, or weights.ckpt.")
    @click.option("--random-init", is_flag=True,
                  help="Random weights with the named architecture (smoke tests only; never a fallback).")
    @click.option("--seed", default=0, show_default=True, help="Seed for --random-init.")
    @click.option("--shift", type=float, default=None,
                  help="Filter modulation shift (default 0.05, as the HF port; 0.0 as the original code).")
    @click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
    @click.option("--trust-checkpoint", is_flag=True,
                  help="Allow full unpickling of an original weights.ckpt (only for files you trust).")
    @functools.wraps(func)
    def wrapper(*args, model_spec, random_init, seed, shift, revision, trust_checkpoint, **kwargs):
        try:
            loaded = load_model(model_spec, random_init=random_init, seed=seed, shift=shift,
                                revision=revision, trust_checkpoint=trust_checkpoint)
        except ModelLoadError as exc:
            raise click.ClickException(str(exc)) from exc
        if loaded.random_init:
            click.secho(f"WARNING: {model_spec} has RANDOM weights (seed {seed}); "
                        "results say nothing about the pretrained model.", fg="yellow", err=True)
        return func(*args, loaded=loaded, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose):
    """HyenaDNA embeddings, cached, and the heads trained on them.

    \b
    Typical run:
      python cli.py embed --model small-32k --input seqs.fa --out seqs.zarr --pool mean
      python cli.py fit-head --cache seqs.zarr --label y --head all --out runs/y
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
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


@main.command("show-model")
@model_options
def show_model(loaded):
    """Load a model and print where it came from, its weights hash and configuration.

    Useful to check local files or the hub cache before a long run.

    \b
    Example:
      python cli.py show-model --model ./hyenadna-small-32k-seqlen-hf
      python cli.py show-model --model tiny-1k --random-init
    """
    info = loaded.describe()
    info["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    click.echo(json.dumps(info, indent=2))


@main.command()
@model_options
@click.option("--input", "input_path", required=True,
              help="FASTA(.gz), CSV/TSV(.gz), Parquet file or folder, saved HF dataset, or hub dataset name.")
@click.option("--out", required=True, type=click.Path(), help="Zarr cache to write (a folder).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--seq-col", help="Column holding the sequence, or a list of reads per sample.")
@click.option("--id-col", help="Column holding row ids (default: the row number).")
@click.option("--label-col", "label_cols", multiple=True, help="Column to carry into the cache (repeatable).")
@click.option("--split", help="Dataset split, for datasets that have several.")
@click.option("--pool", "pools", multiple=True, type=click.Choice(POOLINGS), default=["mean"],
              show_default=True, help="Pooling over real tokens (repeatable).")
@click.option("--per-position", is_flag=True, help="Also store per-position embeddings.")
@click.option("--window", help="Per-position token window START:END (0-based, end exclusive).")
@click.option("--center-window", type=int, help="Per-position window of W tokens centred in each row.")
@click.option("--layer", type=int, default=None,
              help="Hidden state: 0 embeddings, 1..n_layer blocks, -1 final output (default).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage dtype.")
@click.option("--rc", is_flag=True, help="Average pooled vectors with the reverse complement's.")
@click.option("--packs", type=int, help="Cut each multi-read sample into K rows of one group.")
@click.option("--special-tokens", type=click.Choice(["sep", "cls-sep", "none"]), default="sep",
              show_default=True, help="sep: seq+[SEP] as the -hf tokenizer; cls-sep: as the original code.")
@click.option("--on-long", type=click.Choice(["keep-end", "keep-start", "error"]), default="keep-end",
              show_default=True, help="Sequences over l_max: truncate (keep the end or start), or refuse.")
@click.option("--missing-labels", type=click.Choice(["keep", "drop"]), default="keep", show_default=True)
@click.option("--store-sequences/--no-store-sequences", default=True, show_default=True,
              help="Keep the embedded text in the cache (the k-mer baseline needs it).")
@click.option("--batch-tokens", type=int, help="Tokens per batch (default 16k on CPU, 256k on CUDA).")
@click.option("--chunk-rows", type=int, default=1024, show_default=True, help="Rows per cache chunk.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="auto: fp16 autocast on CUDA, float32 on CPU.")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed(loaded, input_path, out, fmt, seq_col, id_col, label_cols, split, pools, per_position,
          window, center_window, layer, dtype, rc, packs, special_tokens, on_long, missing_labels,
          store_sequences, batch_tokens, chunk_rows, device, precision, overwrite, quiet):
    """Embed sequences with a frozen backbone into a resumable Zarr cache.

    Killed or interrupted, the same command picks up where it stopped; on a complete cache
    it does nothing. Several GPUs: `torchrun --nproc-per-node N cli.py embed ...`.

    \b
    Examples:
      python cli.py embed --model small-32k --input seqs.fa.gz --out seqs.zarr --pool mean --pool last
      python cli.py embed --model small-32k --input samples.parquet --seq-col sequences \\
          --id-col sample_id --label-col pH --packs 4 --out ph.zarr
      python cli.py embed --model tiny-1k --random-init --input windows.csv --seq-col seq \\
          --per-position --center-window 64 --out windows.zarr
    """
    options = EmbedOptions(
        pools=tuple(dict.fromkeys(pools)), per_position=per_position, window=parse_window(window),
        center_window=center_window, layer=layer, dtype=dtype, rc=rc, packs=packs,
        special_tokens=special_tokens, truncation=on_long, missing_labels=missing_labels,
        store_sequences=store_sequences, chunk_rows=chunk_rows, batch_tokens=batch_tokens,
        precision=precision, device=device)
    try:
        records = record_reader(input_path, fmt, seq_col, id_col, label_cols, split)
        run_embed(loaded, records, out, options, label_cols, overwrite=overwrite,
                  progress=not quiet, say=lambda msg: click.echo(msg, err=True))
    except (InputError, CacheError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("cache_path", type=click.Path())
def info(cache_path):
    """Summarise a cache: model, settings, rows, labels, and whether it is complete.

    \b
    Example:
      python cli.py info seqs.zarr
    """
    try:
        click.echo(describe(cache_path))
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    sys.exit(main())
