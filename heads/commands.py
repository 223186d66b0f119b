"""Stage two's commands: fit-head, predict, report, and score-variants (whose --board joins
the heads' leaderboard); finetune's is in finetune_commands.py. Registered in cli.py."""
from __future__ import annotations

from pathlib import Path

import click

from hyena_embed.cli_options import (device_option, head_option, input_options,
                                     label_split_options, model_options, no_plots_option,
                                     pair_options, precision_option, quiet_option,
                                     read_pairs_reporting, renamed, say, seed_option,
                                     special_tokens_option, task_option, trust_head_option,
                                     user_errors)
from hyena_embed.devices import resolve_device
from hyena_embed.inputs import InputError, record_reader

from .runs import finish_run, one_writer

loss_option = click.option("--loss", type=click.Choice(["smoothl1", "mse"]), default="smoothl1",
                           show_default=True, help="Regression loss of torch heads.")


def report_end(out, sentence: str | None):
    """The verdict in one sentence (stdout), and where to look (stderr)."""
    if sentence:
        click.echo("\n" + sentence)
    say(f"\nleaderboard: {out}/leaderboard.csv   report: python cli.py report {out}")


threshold_option = click.option(
    "--threshold", type=float,
    help="Regression: also ROC-AUC and PR-AUC of |prediction| against |truth| > T "
         "(effects worth calling), as variant-effect studies report.")


@click.command("score-variants")
@model_options
@input_options()
@pair_options
@click.option("--label", "label_cols", multiple=True,
              help="Label column to carry along and score against (repeatable).")
@click.option("--strands", type=click.Choice(["both", "+"]), default="both", show_default=True,
              help="both: average over the windows and their reverse complements (as GPN).")
@threshold_option
@special_tokens_option
@device_option
@precision_option()
@quiet_option
@click.option("--board", type=click.Path(file_okay=False),
              help="With one --label: add each score as a zero-shot row to this fit-head/finetune "
                   "--out folder's leaderboard, on the same split (--seed) as its heads.")
@seed_option
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Scores, one row per pair: .csv or .parquet.")
@user_errors
def score_variants(loaded, input_path, fmt, seq_col, id_col, split, pairs, label_cols, strands,
                   threshold, special_tokens, device, precision, quiet, board, seed, out_file):
    """Score variant pairs with the language model itself: no training (zero-shot).

    \b
    Scores per pair (averaged over both strands by default):
      site_llr     log p(alt base) - log p(ref base) at the variant, given its left context
                   (SNVs; NaN for indels)
      window_llr   log p(alt window) - log p(ref window); the model is causal, so positions
                   before the variant cancel: it is the variant's own term plus its effect
                   on everything after it
      cosine_mean, l2_mean, cosine_site, l2_site
                   distances between the alleles' mean-pooled and site hidden states

    \b
    With --board OUT (a fit-head --out on the same pairs), each score becomes a zero-shot row
    of OUT's leaderboard, its sign chosen on validation, on the same split as the heads: one
    table shows whether training was needed at all.

    \b
    Example:
      python cli.py score-variants --model tiny-1k --random-init --input examples/demo_pairs.csv \\
          --ref-col REF_SEQ --alt-col ALT_SEQ --id-col ID --label donor --threshold 0.5 \\
          --board runs/pairs --out runs/pair_scores.csv
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from hyena_embed.zeroshot import SCORES, score_pairs

    from .zeroshot import zero_shot_rows, zero_shot_summary

    if board and len(label_cols) != 1:
        raise click.UsageError("--board takes exactly one --label")
    found = read_pairs_reporting(input_path, pairs, id_col, label_cols, seq_col)
    bar = tqdm(total=2 * len(found) * (2 if strands == "both" else 1), unit="window",
               disable=quiet, dynamic_ncols=True)
    scores = score_pairs(loaded, found, strands, device, precision, special_tokens,
                         on_batch=bar.update)
    bar.close()
    table = pd.DataFrame({"id": [p.id for p in found], "ref_allele": [p.ref_allele for p in found],
                          "alt_allele": [p.alt_allele for p in found], **scores,
                          **{c: [p.labels.get(c) for p in found] for c in label_cols}})
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    if out_file.endswith(".parquet"):
        table.to_parquet(out_file, index=False)
    else:
        table.to_csv(out_file, index=False)
    say(f"wrote {len(table)} pairs x {len(SCORES)} scores to {out_file}")
    for label in label_cols:
        click.echo(zero_shot_summary(table, label, SCORES, threshold))
    if board:
        with one_writer(board):
            rows = zero_shot_rows(board, table["id"], scores, table[label_cols[0]], label_cols[0],
                                  seed, threshold)
            report_end(board, finish_run(board, rows, "regression"))


BOARD_COLUMNS = ("features", "head", "val_pearson", "val_accuracy", "test_mae", "test_rmse",
                 "test_r2", "test_pearson", "test_spearman", "test_accuracy", "test_roc_auc",
                 "test_pr_auc", "test_mcc", "fit_seconds", "cv_mae_mean", "cv_r2_mean",
                 "cv_accuracy_mean")


@click.command("fit-head")
@click.option("--cache", "cache_path", required=True, type=click.Path(), help="Cache written by `embed`.")
@click.option("--label", "labels", multiple=True, required=True,
              help="Target column (repeatable for several regression targets).")
@head_option(["linear", "mlp2", "mlp3", "mlp2_ln", "ridge", "elasticnet", "svr/svc", "rf", "knn",
              "logistic", "lightgbm", "all"], multiple=True)
@click.option("--features", "feature_sets", multiple=True,
              help="Pooled arrays to use (default mean); '+' concatenates (mean+last); repeat or use ',' "
                   "to compare sets. Variant pairs (default delta-mean): delta-mean, concat-mean, "
                   "delta-site, delta-sitewin, variant, ...")
@task_option
@renamed("--labels-id-col", "labels_id_col", old=["--id-col"], default="id", show_default=True,
         help="Id column of --labels.")
@label_split_options()
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["kmer", "cnn"]),
              help="kmer: the same heads, tuned alike, on k-mer counts; cnn: a small one-hot CNN "
                   "trained on the sequences (both alleles for variant pairs). Repeatable.")
@click.option("--kmer-max-k", default=6, show_default=True, type=click.IntRange(1, 8),
              help="k-mer baseline uses k = 1..K.")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(1), help="Max epochs of torch heads (early stopping).")
@loss_option
@device_option
@click.option("--cv", type=click.IntRange(2, None), help="Also k-fold cross-validate over samples.")
@threshold_option
@click.option("--head-param", "head_params", multiple=True,
              help="Pin a tuned hyperparameter instead of choosing it on validation: "
                   "HEAD.PARAM=VALUE[,VALUE...], e.g. ridge.alpha=10 (repeatable).")
@click.option("--time-budget", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Cap the whole run: once SECONDS have passed, the heads not yet started are "
                   "skipped, and the run says which.")
@click.option("--full-grid", is_flag=True,
              help="Train every candidate of the MLP and CNN grids to early stopping instead of "
                   "successive halving (those heads take two to three times as long; a short "
                   "first round can still cut a slow starter that would have won).")
@no_plots_option
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
@user_errors
def fit_head(cache_path, labels, heads, feature_sets, task, labels_file, labels_id_col, test_ids,
             split_col, seed, baselines, kmer_max_k, epochs, loss, device, cv, threshold, head_params,
             time_budget, full_grid, no_plots, out):
    """Train heads on cached embeddings and compare them on one fixed split.

    Writes OUT/leaderboard.csv and, per feature set and head, the model, config.json,
    metrics.json, test_predictions.csv (per sample for packs), training_log.csv and plots.

    \b
    Examples (on the caches of embed's examples):
      python cli.py fit-head --cache ph.zarr --label pH --head ridge --head mlp3 --head lightgbm \\
          --baseline kmer --out runs/ph
      python cli.py fit-head --cache ph.zarr --label pH --head mlp3 \\
          --test-ids examples/demo_reads_test.txt --out runs/ph_official
      python cli.py fit-head --cache pairs.zarr --label donor --label acceptor \\
          --features delta-mean --features delta-mean+delta-site --head ridge --out runs/splice
      python cli.py fit-head --cache ph.zarr --label pH --head ridge --head lightgbm \\
          --baseline kmer --time-budget 120 --out runs/ph_quick
    """
    from .features import parse_sets
    from .fit import FitOptions, fit_heads
    from .tuning import parse_head_params

    sets = parse_sets(feature_sets)
    try:
        pinned = parse_head_params(head_params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--head-param") from exc
    options = FitOptions(heads=list(heads), feature_sets=sets,
                         labels=list(labels), task=task, labels_file=labels_file, id_col=labels_id_col,
                         test_ids=test_ids, split_col=split_col, seed=seed, baseline=list(baselines),
                         kmer_max_k=kmer_max_k, epochs=epochs, loss=loss, device=device,
                         plots=not no_plots, cv=cv, head_params=pinned, threshold=threshold,
                         time_budget=time_budget, full_grid=full_grid)
    board = fit_heads(cache_path, out, options, say=say)
    cols = [c for c in board.columns if c in BOARD_COLUMNS]
    click.echo(board[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    report_end(out, board.attrs.get("verdict"))


@click.command()
@click.option("--head-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="One head's folder written by fit-head or finetune (OUT/<features>/<head>).")
@click.option("--cache", "cache_path", type=click.Path(), help="Cache to predict on (heads fitted by fit-head).")
@input_options(required=False, help_suffix=": raw sequences for a fine-tuned model")
@device_option
@trust_head_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="CSV to write (default: stdout).")
@pair_options
@user_errors
def predict(head_dir, cache_path, input_path, fmt, seq_col, id_col, split, device, trust_head,
            out_file, pairs):
    """Apply a fitted head to a cache, or a fine-tuned model to raw sequences.

    A head from fit-head needs a cache made with the same model and layer; a fine-tuned
    model carries its backbone and reads sequences itself.

    \b
    Examples (on the runs of fit-head's and finetune's examples):
      python cli.py predict --head-dir runs/ph/mean/mlp3 --cache ph.zarr --out preds.csv
      python cli.py predict --head-dir runs/ph/finetune-mean-u2/mlp3 \\
          --input examples/demo_reads.parquet --seq-col reads --id-col sample_id --out ft_preds.csv
      python cli.py predict --head-dir runs/pairs/finetune-delta-mean+delta-site-u2/mlp3 \\
          --input examples/demo_pairs.csv --ref-col REF_SEQ --alt-col ALT_SEQ --id-col ID \\
          --out pair_preds.csv
    """
    from .predict import is_pair_model, predict_cache, predict_pairs, predict_sequences, read_head_config

    if (cache_path is None) == (input_path is None):
        raise click.UsageError("give --cache (a head from fit-head) or --input (a fine-tuned model)")
    config = read_head_config(head_dir)
    if config.get("random_init"):
        click.secho(f"WARNING: {head_dir} was fitted on a model with RANDOM weights; its "
                    "predictions say nothing about the pretrained model.", fg="yellow", err=True)
    if cache_path:
        table = predict_cache(head_dir, cache_path, trust_head)
    else:
        carried = [*config.get("options", {}).get("numeric_cols", []),
                   *config.get("options", {}).get("category_cols", [])]
        if is_pair_model(config):
            if not pairs.given:
                raise InputError(f"{head_dir} was fine-tuned on variant pairs: give them as at "
                                 "training (--ref-col/--alt-col, or --genome)")
            found = read_pairs_reporting(input_path, pairs, id_col, carried, seq_col)
            table = predict_pairs(head_dir, found, str(resolve_device(device)))
        else:
            records = record_reader(input_path, fmt, seq_col, id_col, carried, split)
            table = predict_sequences(head_dir, records, str(resolve_device(device)))
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_file, index=False)
        say(f"wrote {len(table)} predictions to {out_file}")
    else:
        click.echo(table.to_csv(index=False), nl=False)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@user_errors
def report(run_dir, open_browser):
    """Write RUN_DIR/report.html: one self-contained page for a fit-head/finetune --out folder.

    The verdict (best embedding head vs best baseline, chosen on validation, with a 95%
    interval), the leaderboard with intervals, every head's plots, the cache, and the exact
    commands and versions.

    \b
    Example:
      python cli.py report runs/ph
    """
    from .report import write_report

    path = write_report(run_dir)
    click.echo(f"wrote {path}")
    if open_browser:
        click.launch(str(path))


def register(group: click.Group):
    for command in (score_variants, fit_head, predict, report):
        group.add_command(command)
