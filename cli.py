"""Command line for hyena-embed: a thin shell over the library (`python cli.py --help`)."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from hyena_embed import REGISTRY, ModelLoadError, load_model


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


if __name__ == "__main__":
    sys.exit(main())
