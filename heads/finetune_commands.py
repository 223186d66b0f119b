"""finetune's command: the third path (the backbone's last blocks trained with a head, end to
end, from raw sequences), beside stage two's commands and sharing their board. Registered on
the group in cli.py."""
from __future__ import annotations

import click

from hyena_embed.cli_options import (compose, device_option, head_option, input_options,
                                     label_split_options, model_options, no_plots_option,
                                     on_long_option, packs_option, pair_options, precision_option,
                                     quiet_option, read_pairs_reporting, say,
                                     site_window_option, special_tokens_option, task_option,
                                     trust_head_option, user_errors)
from hyena_embed.devices import resolve_device
from hyena_embed.distributed import launched_rank
from hyena_embed.inputs import record_reader

from .commands import loss_option, report_end

finetune_training_options = compose(
    click.option("--pool", "pooling", default="mean", show_default=True,
                 type=click.Choice(["mean", "last", "first", "max", "attention"]),
                 help="Pooling over real tokens; attention learns a weighting."),
    click.option("--unfreeze", default="2", show_default=True,
                 help="Trainable: 0 = head only, N = last N blocks + final norm, all = everything."),
    click.option("--lr", default=1e-3, show_default=True, help="Learning rate of the head."),
    click.option("--encoder-lr-mult", default=0.1, show_default=True,
                 help="Encoder learning rate = lr * this."),
    click.option("--weight-decay", default=0.01, show_default=True,
                 help="AdamW weight decay (not on biases and norms)."),
    click.option("--epochs", default=20, show_default=True, type=click.IntRange(1),
                 help="Max epochs (early stopping on validation loss)."),
    click.option("--batch-size", default=16, show_default=True, help="Rows per forward pass."),
    click.option("--grad-accum", default=1, show_default=True, help="Forward passes per optimiser step."),
    click.option("--clip-grad", default=1.0, show_default=True, help="Max gradient norm (0: off)."),
    click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default="cosine",
                 show_default=True,
                 help="Learning rate after warmup: cosine decay, or halve on a validation plateau."),
    click.option("--warmup", default=0.05, show_default=True, help="Warmup, as a fraction of the steps."),
    click.option("--patience", default=5, show_default=True,
                 help="Early stopping: epochs without a better validation loss."),
    loss_option,
    click.option("--dropout", default=0.1, show_default=True, help="Dropout in the head."),
    precision_option("auto: fp16 with a grad scaler on CUDA, float32 on CPU."),
    click.option("--grad-checkpoint", is_flag=True,
                 help="Recompute trainable blocks in backward (long sequences)."),
    click.option("--rc-augment", is_flag=True, help="Reverse-complement training rows at random."),
    click.option("--shuffle-reads", is_flag=True, help="Shuffle the order of joined reads at random."),
    click.option("--init-head", type=click.Path(exists=True, file_okay=False),
                 help="Start from a torch head fitted by fit-head (OUT/<features>/<head>)."),
    trust_head_option,
    click.option("--numeric-col", "numeric_cols", multiple=True,
                 help="Extra numeric input column (repeatable)."),
    click.option("--category-col", "category_cols", multiple=True,
                 help="Extra categorical input column, learned embedding (repeatable; e.g. ref and alt base)."))

finetune_pair_options = compose(
    pair_options,
    click.option("--features", "pair_features", multiple=True,
                 help="Variant pairs: one feature set, fit-head's names joined with '+' (default "
                      "delta-<pool>): delta-mean, concat-mean, delta-site, delta-sitewin, variant, ..."),
    site_window_option,
    click.option("--variant-embedding", is_flag=True,
                 help="Variant pairs: add a learned embedding of the reference and alternative base."),
    click.option("--group-col", help="Variant pairs: split by this column (e.g. gene) instead of by pair."))


@click.command()
@model_options
@input_options()
@click.option("--label", "labels", multiple=True, required=True,
              help="Target column of the input, or of --labels (repeatable for several regression targets).")
@click.option("--labels-id-col", default="id", show_default=True, help="Id column of --labels.")
@task_option
@label_split_options("Input column holding train/val/test.")
@head_option(["linear", "mlp2", "mlp3", "mlp2_ln"])
@finetune_training_options
@packs_option
@special_tokens_option
@on_long_option
@device_option
@click.option("--overwrite", is_flag=True, help="Start again instead of resuming.")
@quiet_option
@no_plots_option
@click.option("--out", required=True, type=click.Path(), help="Output folder (shared with fit-head's leaderboard).")
@click.option("--cache", type=click.Path(exists=True, file_okay=False),
              help="Read the frozen blocks' output from this cache, made by `embed --per-position "
                   "--layer K` on the same input (K = blocks - N for --unfreeze N): only the "
                   "trainable blocks run. With --rc-augment, embed it with --rc (both strands).")
@finetune_pair_options
@user_errors
def finetune(loaded, input_path, fmt, seq_col, id_col, split, labels, on_long, overwrite, quiet,
             no_plots, out, pairs, pair_features, **fields):
    """Fine-tune the last N blocks with a head, end to end, from raw sequences.

    Writes OUT/finetune-<pool>-u<N>/<head>/ (best_model.pt, config.json, metrics.json,
    training_log.csv, test_predictions.csv, plots) and a row in OUT/leaderboard.csv beside
    fit-head's. Killed, the same command resumes after the last finished epoch.

    \b
    With --cache, the frozen blocks are read, not run: for `--unfreeze N` on a model of L
    blocks, `embed --per-position --layer L-N` (or, for any model, `--layer -(N+2)`) of the
    same input writes the states it reads (add --rc for --rc-augment: both strands).

    \b
    Examples (the second starts from fit-head's probe in runs/ph; the last two write, then
    read, the output of all blocks but the last: --layer -3 for --unfreeze 1):
      python cli.py finetune --model small-32k --input examples/demo_reads.parquet --seq-col reads \\
          --id-col sample_id --label pH --packs 4 --head mlp3 --unfreeze 2 --epochs 2 --out runs/ph
      python cli.py finetune --model small-32k --input examples/demo_reads.parquet --seq-col reads \\
          --id-col sample_id --label pH --packs 4 --head mlp3 --unfreeze 0 \\
          --init-head runs/ph/mean/mlp3 --epochs 2 --out runs/ph
      python cli.py finetune --model small-32k --input examples/demo_pairs.csv --ref-col REF_SEQ \\
          --alt-col ALT_SEQ --id-col ID --label donor --features delta-mean+delta-site \\
          --variant-embedding --unfreeze 2 --grad-accum 4 --epochs 2 --out runs/pairs
      python cli.py embed --model small-32k --input examples/demo_pairs.csv --ref-col REF_SEQ \\
          --alt-col ALT_SEQ --id-col ID --per-position --layer -3 --out states.zarr
      python cli.py finetune --model small-32k --input examples/demo_pairs.csv --ref-col REF_SEQ \\
          --alt-col ALT_SEQ --id-col ID --label donor --unfreeze 1 --cache states.zarr \\
          --epochs 2 --out runs/pairs-cached
    """
    from .features import one_set
    from .finetune import FinetuneOptions, finetune as run_finetune

    fields["numeric_cols"], fields["category_cols"] = list(fields["numeric_cols"]), list(fields["category_cols"])
    options = FinetuneOptions(labels=list(labels), truncation=on_long, plots=not no_plots,
                              features=one_set(pair_features), **fields)
    carried = list(dict.fromkeys([*([] if options.labels_file else labels), *options.numeric_cols,
                                  *options.category_cols,
                                  *([options.split_col] if options.split_col else []),
                                  *([options.group_col] if options.group_col else [])]))
    # checked before anything is read
    options.validate(loaded.config.n_layer, resolve_device(options.device), pairs=pairs.given)
    if options.cache is not None:
        from cache.folders import separate

        separate(out, options.cache)
    records, found = None, None
    if pairs.given:
        found = read_pairs_reporting(input_path, pairs, id_col, carried, seq_col)
    else:
        records = record_reader(input_path, fmt, seq_col, id_col, carried, split)
    row = run_finetune(loaded, records, out, options, overwrite=overwrite, progress=not quiet,
                       say=say, pairs=found)
    if launched_rank() != 0:  # rank 0 reports
        return
    shown = {k: v for k, v in row.items() if k.startswith("test_") and isinstance(v, float)}
    click.echo("test: " + "  ".join(f"{k[5:]}={v:.4f}" for k, v in shown.items()))
    report_end(out, row.get("verdict"))


def register(group: click.Group):
    group.add_command(finetune)
