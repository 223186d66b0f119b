"""Command line for hyena-embed: a thin shell over the library (`python cli.py --help`)."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from pathlib import Path

import click

from cache.store import CacheError, describe
from hyena_embed import REGISTRY, ModelLoadError, cpu, load_model
from hyena_embed.distributed import launched_rank
from hyena_embed.inputs import FORMATS, InputError, record_reader
from hyena_embed.locking import LockedError, exclusive
from hyena_embed.pooling import POOLINGS
from hyena_embed.devices import resolve_device
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


class RenamedOption(click.Option):
    """An option whose old spellings (`old=`) still parse but are left out of --help."""

    def __init__(self, *args, old=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.old = tuple(old)

    def get_help_record(self, ctx):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.old]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def renamed(*decls, old, **kwargs):
    """click.option with hidden old spellings: renamed("--label", "labels", old=["--label-col"])."""
    return click.option(*decls[:-1], *old, decls[-1], cls=RenamedOption, old=old, **kwargs)


def model_options(func):
    """--model and the options that say how to load it, shared by every command that needs one."""
    @click.option("--model", "model_spec", required=True,
                  help="Registry name (see `models`), hub repo id, local -hf folder, or weights.ckpt.")
    @click.option("--random-init", is_flag=True,
                  help="Random weights with the named architecture (smoke tests only; never a fallback).")
    @click.option("--init-seed", default=0, show_default=True, help="Seed of the --random-init weights.")
    @click.option("--shift", type=float, default=None,
                  help="Filter modulation shift (default 0.05, as the HF port; 0.0 as the original code).")
    @click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
    @click.option("--trust-checkpoint", is_flag=True,
                  help="Allow full unpickling of an original weights.ckpt (only for files you trust).")
    @functools.wraps(func)
    def wrapper(*args, model_spec, random_init, init_seed, shift, revision, trust_checkpoint, **kwargs):
        try:
            loaded = load_model(model_spec, random_init=random_init, seed=init_seed, shift=shift,
                                revision=revision, trust_checkpoint=trust_checkpoint)
        except ModelLoadError as exc:
            raise click.ClickException(str(exc)) from exc
        if loaded.random_init and launched_rank() == 0:  # once, not once per torchrun rank
            click.secho(f"WARNING: {model_spec} has RANDOM weights (seed {init_seed}); "
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
    # Large CPU tensors otherwise cost a page fault per 4 KiB on every forward (see hyena_embed.cpu).
    cpu.keep_freed_memory()


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


def pair_options(func):
    """Where variant pairs come from: shared by embed and score-variants."""
    decorators = [
        click.option("--ref-col", help="Variant pairs from a table: column of reference sequences."),
        click.option("--alt-col", help="... and column of alternative sequences (same row)."),
        click.option("--site-col", help="0-based variant index in the sequences (default: first difference)."),
        click.option("--genome", type=click.Path(exists=True, dir_okay=False),
                     help="Variant pairs from --input VCF or chrom/pos/ref/alt table + this FASTA."),
        click.option("--window", "variant_window", type=click.IntRange(1), default=501, show_default=True,
                     help="Window (nt) centred on each variant, with --genome."),
        click.option("--strand-col", help="Column of +/- strands (with --genome): '-' windows are "
                                          "reverse-complemented."),
        click.option("--on-mismatch", type=click.Choice(["skip", "error"]), default="skip",
                     show_default=True,
                     help="Reference allele not matching the genome: skip the row (counted) or stop."),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


def input_options(required=True, help_suffix=""):
    """Where sequences come from: shared by every command that reads raw input."""
    def decorate(func):
        @click.option("--input", "input_path", required=required,
                      help="FASTA(.gz), CSV/TSV(.gz), Parquet file or folder, saved HF dataset, "
                           "or hub dataset name" + help_suffix + ".")
        @click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                      help="Input format; auto goes by the file name.")
        @click.option("--seq-col", help="Column holding the sequence, or a list of reads per sample.")
        @click.option("--id-col", help="Column of the input holding row ids (default: the row number).")
        @click.option("--split", help="Dataset split, for datasets that have several.")
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapper
    return decorate


def trust_head_option(func):
    return click.option("--trust-head", is_flag=True,
                        help="Allow a pickled head.joblib (folders from older versions): pickles can "
                             "run code, so only for folders you made yourself.")(func)


def device_option(help_text="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ..."):
    return click.option("--device", default="auto", show_default=True, help=help_text)


def seed_option(func):
    """The split seed: the same fixed 80/10/10 split in fit-head and finetune."""
    return renamed("--seed", "seed", old=["--train-seed"], default=42, show_default=True,
                   help="Seed of the random 80/10/10 split by sample (the same split in fit-head "
                        "and finetune) and of training.")(func)


def head_option(choices, default="mlp3", multiple=False):
    text = ", ".join(choices)
    return click.option("--head", "heads" if multiple else "head", multiple=multiple,
                        default=[default] if multiple else default, show_default=True,
                        help=f"Head to train: {text}" + (" (repeatable)." if multiple else "."))


@main.command()
@model_options
@input_options()
@click.option("--out", required=True, type=click.Path(), help="Zarr cache to write (a folder).")
@renamed("--label", "label_cols", old=["--label-col"], multiple=True,
         help="Label column to carry into the cache (repeatable).")
@click.option("--pool", "pools", multiple=True, type=click.Choice(POOLINGS), default=["mean"],
              show_default=True, help="Pooling over real tokens (repeatable).")
@click.option("--per-position", is_flag=True, help="Also store per-position embeddings.")
@click.option("--position-window", "window", help="Per-position token window START:END (0-based, end exclusive).")
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
@click.option("--label-type", type=click.Choice(["auto", "numeric", "text"]), default="auto",
              show_default=True, help="auto: numeric when every present value is a number; a "
              "column of numbers with a few other values is an error naming them.")
@click.option("--missing-labels", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="Rows whose --label is missing: keep them (NaN) or drop them (counted).")
@click.option("--store-sequences/--no-store-sequences", default=True, show_default=True,
              help="Keep the embedded text in the cache (the k-mer baseline needs it).")
@click.option("--batch-tokens", type=int, help="Tokens per batch (default: 16k on CPU; on CUDA sized from the free GPU memory).")
@click.option("--chunk-rows", type=click.IntRange(1), default=1024, show_default=True,
              help="Rows per cache chunk (the unit of resuming).")
@device_option()
@click.option("--precision", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="auto: fp16 autocast on CUDA, float32 on CPU.")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pair_options
@click.option("--site-window", type=click.IntRange(0), default=5, show_default=True,
              help="Variant pairs: also store the state at the site and the mean over site +- K.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the dense parts (the FFT stays float32); falls back with a "
                   "message where it cannot compile. Pays off on long GPU runs.")
def embed(loaded, input_path, out, fmt, seq_col, id_col, label_cols, split, pools, per_position,
          window, center_window, layer, dtype, rc, packs, special_tokens, on_long, label_type,
          missing_labels,
          store_sequences, batch_tokens, chunk_rows, device, precision, overwrite, quiet,
          ref_col, alt_col, site_col, genome, variant_window, strand_col, on_mismatch, site_window,
          compile_model):
    """Embed sequences with a frozen backbone into a resumable Zarr cache.

    Killed or interrupted, the same command picks up where it stopped; on a complete cache
    it does nothing. Several GPUs: `torchrun --nproc-per-node N cli.py embed ...`.

    \b
    Examples:
      python cli.py embed --model small-32k --input seqs.fa.gz --out seqs.zarr --pool mean --pool last
      python cli.py embed --model small-32k --input samples.parquet --seq-col sequences \\
          --id-col sample_id --label pH --packs 4 --out ph.zarr
      python cli.py embed --model tiny-1k --random-init --input windows.csv --seq-col seq \\
          --per-position --center-window 64 --out windows.zarr
      python cli.py embed --model small-32k --input mapsy.txt --ref-col WT_SEQ --alt-col MUT_SEQ \\
          --id-col ID --label log2_vivo_ratio --out mapsy.zarr
      python cli.py embed --model small-32k --input variants.vcf.gz --genome hg38.fa \\
          --window 501 --out variants.zarr
    """
    options = EmbedOptions(
        pools=tuple(dict.fromkeys(pools)), per_position=per_position, window=parse_window(window),
        center_window=center_window, layer=layer, dtype=dtype, rc=rc, packs=packs,
        special_tokens=special_tokens, truncation=on_long, missing_labels=missing_labels,
        label_type=label_type,
        store_sequences=store_sequences, chunk_rows=chunk_rows, batch_tokens=batch_tokens,
        precision=precision, device=device, compile=compile_model)
    try:
        pairs = None
        if ref_col or alt_col or genome:
            records, pairs = _variant_records(input_path, ref_col, alt_col, site_col, id_col,
                                              label_cols, genome, variant_window, strand_col,
                                              on_mismatch, seq_col)
            options.site_window = site_window
        else:
            records = record_reader(input_path, fmt, seq_col, id_col, label_cols, split)
        run_embed(loaded, records, out, options, label_cols, overwrite=overwrite,
                  progress=not quiet, say=lambda msg: click.echo(msg, err=True), pairs=pairs)
    except (InputError, CacheError, ValueError, LockedError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a read-only or full disk while writing the cache
        raise click.ClickException(_os_error_message(exc, out)) from exc


def _os_error_message(exc: OSError, out) -> str:
    import errno

    where = exc.filename or out
    if exc.errno == errno.ENOSPC:
        return (f"disk full while writing {where}: free some space, then run the same command "
                "again; it resumes where it stopped")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {exc.strerror}; choose an --out you can write to"
    return f"{where}: {exc.strerror or exc}"


def _variant_records(input_path, ref_col, alt_col, site_col, id_col, label_cols, genome, window,
                     strand_col, on_mismatch, seq_col):
    """Both alleles of every pair as rows of one run, and the pair table for the cache."""
    from hyena_embed.variants import pair_records, pair_table

    pairs = _read_pairs(input_path, ref_col, alt_col, site_col, id_col, label_cols, genome, window,
                        strand_col, on_mismatch, seq_col)
    return (lambda: pair_records(pairs)), pair_table(pairs)


def _read_pairs(input_path, ref_col, alt_col, site_col, id_col, label_cols, genome, window,
                strand_col, on_mismatch, seq_col):
    """Variant pairs from a two-column table or a VCF/table + genome; the report is printed."""
    from hyena_embed.variants import PairReport, pairs_from_genome, pairs_from_table

    if seq_col:
        raise InputError("variant pairs take --ref-col/--alt-col or --genome, not --seq-col")
    report = PairReport()
    if genome:
        if ref_col or alt_col or site_col:
            raise InputError("give --genome (windows cut around each variant) or --ref-col and "
                             "--alt-col (sequences in a table), not both")
        pairs = list(pairs_from_genome(input_path, genome, window, on_mismatch, label_cols,
                                       strand_col, report))
    else:
        if not (ref_col and alt_col):
            raise InputError("variant pairs from a table need both --ref-col and --alt-col")
        pairs = list(pairs_from_table(input_path, ref_col, alt_col, id_col, label_cols, site_col,
                                      report))
    if launched_rank() == 0:
        click.echo(report.line(), err=True)
    if not pairs:
        raise InputError("no variant pairs in the input")
    return pairs


@main.command("score-variants")
@model_options
@input_options()
@pair_options
@click.option("--label", "label_cols", multiple=True,
              help="Label column to carry along and score against (repeatable).")
@click.option("--strands", type=click.Choice(["both", "+"]), default="both", show_default=True,
              help="both: average over the windows and their reverse complements (as GPN).")
@click.option("--threshold", type=float,
              help="With --label: also AUROC of each |score| against |label| > T.")
@click.option("--special-tokens", type=click.Choice(["sep", "cls-sep", "none"]), default="sep",
              show_default=True, help="sep: seq+[SEP] as the -hf tokenizer; cls-sep: as the original code.")
@device_option()
@click.option("--precision", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="auto: fp16 autocast on CUDA, float32 on CPU.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--board", type=click.Path(file_okay=False),
              help="With one --label: add each score as a zero-shot row to this fit-head/finetune "
                   "--out folder's leaderboard, on the same split (--seed) as its heads.")
@seed_option
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Scores, one row per pair: .csv or .parquet.")
def score_variants(loaded, input_path, fmt, seq_col, id_col, split, ref_col, alt_col, site_col,
                   genome, variant_window, strand_col, on_mismatch, label_cols, strands, threshold,
                   special_tokens, device, precision, quiet, board, seed, out_file):
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

    from heads.zeroshot import zero_shot_summary
    from hyena_embed.zeroshot import SCORES, score_pairs

    try:
        pairs = _read_pairs(input_path, ref_col, alt_col, site_col, id_col, label_cols, genome,
                            variant_window, strand_col, on_mismatch, seq_col)
        bar = tqdm(total=2 * len(pairs) * (2 if strands == "both" else 1), unit="window",
                   disable=quiet, dynamic_ncols=True)
        scores = score_pairs(loaded, pairs, strands, device, precision, special_tokens,
                             on_batch=bar.update)
        bar.close()
    except (InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    table = pd.DataFrame({"id": [p.id for p in pairs], "ref_allele": [p.ref_allele for p in pairs],
                          "alt_allele": [p.alt_allele for p in pairs], **scores,
                          **{c: [p.labels.get(c) for p in pairs] for c in label_cols}})
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    if out_file.endswith(".parquet"):
        table.to_parquet(out_file, index=False)
    else:
        table.to_csv(out_file, index=False)
    click.echo(f"wrote {len(table)} pairs x {len(SCORES)} scores to {out_file}", err=True)
    for label in label_cols:
        click.echo(zero_shot_summary(table, label, SCORES, threshold))
    if board:
        from heads.zeroshot import zero_shot_rows

        if len(label_cols) != 1:
            raise click.UsageError("--board takes exactly one --label")
        with one_writer(board):
            try:
                rows = zero_shot_rows(board, table["id"], scores, table[label_cols[0]],
                                      label_cols[0], seed, threshold)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            _finish_run(board, rows, "regression")


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


@main.command()
@click.argument("cache_path", type=click.Path())
def verify(cache_path):
    """Check every chunk of a cache: missing or corrupt data, and whether it is complete.

    Exits non-zero when anything is wrong, and says how to repair: rerun the embed command
    that made the cache; it recomputes damaged chunks and mends the row metadata.

    \b
    Example:
      python cli.py verify seqs.zarr
    """
    from cache.store import Cache

    try:
        problems = Cache.open(cache_path).verify()
    except CacheError as exc:
        raise click.ClickException(str(exc)) from exc
    if not problems:
        click.echo(f"{cache_path}: every chunk present and its checksum correct; complete")
        return
    for line in problems:
        click.echo(f"{cache_path}: {line}", err=True)
    raise click.ClickException(f"{cache_path} has {len(problems)} problem(s); repair: rerun the "
                               "embed command that made it (same --out and settings)")


@main.command("fit-head")
@click.option("--cache", "cache_path", required=True, type=click.Path(), help="Cache written by `embed`.")
@click.option("--label", "labels", multiple=True, required=True,
              help="Target column (repeatable for several regression targets).")
@head_option(["linear", "mlp2", "mlp3", "mlp2_ln", "ridge", "elasticnet", "svr/svc", "rf", "knn",
              "logistic", "lightgbm", "all"], multiple=True)
@click.option("--features", "feature_sets", multiple=True,
              help="Pooled arrays to use (default mean); '+' concatenates (mean+last); repeat or use ',' "
                   "to compare sets. Variant pairs (default delta-mean): delta-mean, concat-mean, "
                   "site-delta, sitewin-delta, variant, ...")
@click.option("--task", type=click.Choice(["regression", "classification"]),
              help="Inferred when unambiguous.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Table to join labels from, on --labels-id-col (sample ids when rows are packs).")
@renamed("--labels-id-col", "labels_id_col", old=["--id-col"], default="id", show_default=True,
         help="Id column of --labels.")
@click.option("--test-ids", type=click.Path(exists=True, dir_okay=False),
              help="File of test sample ids (one per line, or a CSV's id column).")
@click.option("--split-col", help="Label column holding train/val/test.")
@seed_option
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["kmer", "cnn"]),
              help="kmer: the same heads, tuned alike, on k-mer counts; cnn: a small one-hot CNN "
                   "trained on the sequences (both alleles for variant pairs). Repeatable.")
@click.option("--kmer-max-k", default=6, show_default=True, help="k-mer baseline uses k = 1..K.")
@click.option("--epochs", default=100, show_default=True, help="Max epochs of torch heads (early stopping).")
@click.option("--loss", type=click.Choice(["smoothl1", "mse"]), default="smoothl1", show_default=True,
              help="Regression loss of torch heads.")
@device_option()
@click.option("--cv", type=click.IntRange(2, None), help="Also k-fold cross-validate over samples.")
@click.option("--threshold", type=float,
              help="Regression: also ROC-AUC and PR-AUC of |prediction| against |truth| > T "
                   "(effects worth calling), as variant-effect studies report.")
@click.option("--head-param", "head_params", multiple=True,
              help="Pin a tuned hyperparameter instead of choosing it on validation: "
                   "HEAD.PARAM=VALUE[,VALUE...], e.g. ridge.alpha=10 (repeatable).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
def fit_head(cache_path, labels, heads, feature_sets, task, labels_file, labels_id_col, test_ids,
             split_col, seed, baselines, kmer_max_k, epochs, loss, device, cv, threshold, head_params,
             no_plots, out):
    """Train heads on cached embeddings and compare them on one fixed split.

    Writes OUT/leaderboard.csv and, per feature set and head, the model, config.json,
    metrics.json, test_predictions.csv (per sample for packs), training_log.csv and plots.

    \b
    Examples:
      python cli.py fit-head --cache ph.zarr --label pH --head all --baseline kmer --out runs/ph
      python cli.py fit-head --cache ph.zarr --label pH --head mlp3 --test-ids test_samples.txt --out runs/ph
      python cli.py fit-head --cache pairs.zarr --label donor --label acceptor --label neither \\
          --features mean --features mean+last --head ridge --out runs/splice
    """
    from heads.data import DataError
    from heads.fit import FitOptions, fit_heads
    from heads.tuning import parse_head_params

    sets = [f.split("+") for text in feature_sets for f in text.split(",")]
    try:
        pinned = parse_head_params(head_params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--head-param") from exc
    options = FitOptions(heads=list(heads), feature_sets=sets,
                         labels=list(labels), task=task, labels_file=labels_file, id_col=labels_id_col,
                         test_ids=test_ids, split_col=split_col, seed=seed, baseline=list(baselines),
                         kmer_max_k=kmer_max_k, epochs=epochs, loss=loss, device=device,
                         plots=not no_plots, cv=cv, head_params=pinned, threshold=threshold)
    with one_writer(out):
        try:
            board = fit_heads(cache_path, out, options, say=lambda m: click.echo(m, err=True))
        except (CacheError, DataError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        cols = [c for c in board.columns if c in (
            "features", "head", "val_pearson", "val_accuracy", "test_mae", "test_rmse", "test_r2",
            "test_pearson", "test_spearman", "test_accuracy", "test_roc_auc", "test_pr_auc",
            "test_mcc", "fit_seconds", "cv_mae_mean", "cv_r2_mean", "cv_accuracy_mean")]
        click.echo(board[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        _finish_run(out, board, "regression" if "test_mae" in board else "classification")


@contextlib.contextmanager
def one_writer(out):
    """One run writes into an --out folder at a time (as embed's caches): its leaderboard and
    head folders are read, merged and rewritten. Under torchrun rank 0 holds the lock for
    all ranks (the others do not write)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    if launched_rank() != 0:
        yield
        return
    try:
        with exclusive(out):
            yield
    except LockedError as exc:
        raise click.ClickException(str(exc)) from exc


def _finish_run(out, board, task):
    """Log the command into OUT, then the verdict in one sentence and where to look."""
    from heads.report import log_command
    from heads.verdict import annotate_board

    log_command(out)
    verdict = annotate_board(out, board, task)
    if verdict["sentence"]:
        click.echo("\n" + verdict["sentence"])
    click.echo(f"\nleaderboard: {out}/leaderboard.csv   report: python cli.py report {out}", err=True)


@main.command()
@model_options
@input_options()
@click.option("--label", "labels", multiple=True, required=True,
              help="Target column of the input, or of --labels (repeatable for several regression targets).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Table to join labels from, on --labels-id-col (sample ids when rows are packs).")
@click.option("--labels-id-col", default="id", show_default=True, help="Id column of --labels.")
@click.option("--task", type=click.Choice(["regression", "classification"]), help="Inferred when unambiguous.")
@click.option("--test-ids", type=click.Path(exists=True, dir_okay=False),
              help="File of test sample ids (one per line, or a CSV's id column).")
@click.option("--split-col", help="Input column holding train/val/test.")
@seed_option
@head_option(["linear", "mlp2", "mlp3", "mlp2_ln"])
@click.option("--pool", "pooling", default="mean", show_default=True,
              type=click.Choice(["mean", "last", "first", "max", "attention"]),
              help="Pooling over real tokens; attention learns a weighting.")
@click.option("--unfreeze", default="2", show_default=True,
              help="Trainable: 0 = head only, N = last N blocks + final norm, all = everything.")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate of the head.")
@click.option("--encoder-lr-mult", default=0.1, show_default=True, help="Encoder learning rate = lr * this.")
@click.option("--weight-decay", default=0.01, show_default=True, help="AdamW weight decay (not on biases and norms).")
@click.option("--epochs", default=20, show_default=True, help="Max epochs (early stopping on validation loss).")
@click.option("--batch-size", default=16, show_default=True, help="Rows per forward pass.")
@click.option("--grad-accum", default=1, show_default=True, help="Forward passes per optimiser step.")
@click.option("--clip-grad", default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--schedule", type=click.Choice(["cosine", "plateau"]), default="cosine", show_default=True,
              help="Learning rate after warmup: cosine decay, or halve on a validation plateau.")
@click.option("--warmup", default=0.05, show_default=True, help="Warmup, as a fraction of the steps.")
@click.option("--patience", default=5, show_default=True, help="Early stopping: epochs without a better validation loss.")
@click.option("--loss", type=click.Choice(["smoothl1", "mse"]), default="smoothl1", show_default=True,
              help="Regression loss.")
@click.option("--dropout", default=0.1, show_default=True, help="Dropout in the head.")
@click.option("--precision", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="auto: fp16 with a grad scaler on CUDA, float32 on CPU.")
@click.option("--grad-checkpoint", is_flag=True, help="Recompute trainable blocks in backward (long sequences).")
@click.option("--rc-augment", is_flag=True, help="Reverse-complement training rows at random.")
@click.option("--shuffle-reads", is_flag=True, help="Shuffle the order of joined reads at random.")
@click.option("--init-head", type=click.Path(exists=True, file_okay=False),
              help="Start from a torch head fitted by fit-head (OUT/<features>/<head>).")
@trust_head_option
@click.option("--numeric-col", "numeric_cols", multiple=True, help="Extra numeric input column (repeatable).")
@click.option("--category-col", "category_cols", multiple=True,
              help="Extra categorical input column, learned embedding (repeatable; e.g. ref and alt base).")
@click.option("--packs", type=int, help="Cut each multi-read sample into K rows of one group.")
@click.option("--special-tokens", type=click.Choice(["sep", "cls-sep", "none"]), default="sep",
              show_default=True, help="sep: seq+[SEP] as the -hf tokenizer; cls-sep: as the original code.")
@click.option("--on-long", type=click.Choice(["keep-end", "keep-start", "error"]), default="keep-end",
              show_default=True, help="Sequences over l_max: truncate (keep the end or start), or refuse.")
@device_option()
@click.option("--overwrite", is_flag=True, help="Start again instead of resuming.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (shared with fit-head's leaderboard).")
@pair_options
@click.option("--features", "pair_features",
              help="Variant pairs: fit-head's pair feature names joined with '+' (default "
                   "delta-<pool>): delta-mean, concat-mean, delta-site, delta-sitewin, variant, ...")
@click.option("--site-window", type=click.IntRange(0), default=5, show_default=True,
              help="Variant pairs: sitewin is the mean over the site +- K tokens.")
@click.option("--variant-embedding", is_flag=True,
              help="Variant pairs: add a learned embedding of the reference and alternative base.")
@click.option("--group-col", help="Variant pairs: split by this column (e.g. gene) instead of by pair.")
def finetune(loaded, input_path, fmt, seq_col, id_col, split, labels, labels_file, labels_id_col,
             task, test_ids, split_col, seed, head, pooling, unfreeze, lr, encoder_lr_mult,
             weight_decay, epochs, batch_size, grad_accum, clip_grad, schedule, warmup, patience,
             loss, dropout, precision, grad_checkpoint, rc_augment, shuffle_reads, init_head, trust_head,
             numeric_cols, category_cols, packs, special_tokens, on_long, device, overwrite,
             quiet, no_plots, out, ref_col, alt_col, site_col, genome, variant_window, strand_col,
             on_mismatch, pair_features, site_window, variant_embedding, group_col):
    """Fine-tune the last N blocks with a head, end to end, from raw sequences.

    Writes OUT/finetune-<pool>-u<N>/<head>/ (best_model.pt, config.json, metrics.json,
    training_log.csv, test_predictions.csv, plots) and a row in OUT/leaderboard.csv beside
    fit-head's. Killed, the same command resumes after the last finished epoch.

    \b
    Examples:
      python cli.py finetune --model small-32k --input samples.parquet --seq-col reads \\
          --id-col sample_id --label pH --packs 4 --head mlp3 --unfreeze 2 --out runs/ph
      python cli.py finetune --model tiny-1k --random-init --input seqs.csv --seq-col seq \\
          --label y --unfreeze 0 --init-head runs/y/mean/mlp3 --head mlp3 --out runs/y
      python cli.py finetune --model small-32k --input mapsy.txt --ref-col WT_SEQ --alt-col MUT_SEQ \\
          --id-col ID --label log2_vivo_ratio --features delta-mean+delta-site --variant-embedding \\
          --unfreeze 2 --grad-accum 4 --out runs/mapsy
    """
    from heads.finetune import FinetuneError, FinetuneOptions, finetune as run_finetune

    options = FinetuneOptions(
        labels=list(labels), head=head, pooling=pooling, unfreeze=unfreeze, lr=lr,
        encoder_lr_mult=encoder_lr_mult, weight_decay=weight_decay, epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, clip_grad=clip_grad, schedule=schedule,
        warmup=warmup, patience=patience, loss=loss, dropout=dropout, precision=precision,
        grad_checkpoint=grad_checkpoint, rc_augment=rc_augment, shuffle_reads=shuffle_reads,
        init_head=init_head, trust_head=trust_head, numeric_cols=list(numeric_cols), category_cols=list(category_cols),
        task=task, labels_file=labels_file, labels_id_col=labels_id_col, test_ids=test_ids,
        split_col=split_col, packs=packs, special_tokens=special_tokens, truncation=on_long,
        seed=seed, device=device, plots=not no_plots,
        features=pair_features.split("+") if pair_features else None, site_window=site_window,
        variant_embedding=variant_embedding, group_col=group_col)
    carried = list(dict.fromkeys([*([] if labels_file else labels), *numeric_cols, *category_cols,
                                  *([split_col] if split_col else []),
                                  *([group_col] if group_col else [])]))
    is_pairs = bool(ref_col or alt_col or genome)
    try:
        # before reading anything
        options.validate(loaded.config.n_layer, resolve_device(device), pairs=is_pairs)
        records, pairs = None, None
        if is_pairs:
            pairs = _read_pairs(input_path, ref_col, alt_col, site_col, id_col, carried, genome,
                                variant_window, strand_col, on_mismatch, seq_col)
        else:
            records = record_reader(input_path, fmt, seq_col, id_col, carried, split)
    except (FinetuneError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    with one_writer(out):
        try:
            row = run_finetune(loaded, records, out, options, overwrite=overwrite,
                               progress=not quiet, say=lambda m: click.echo(m, err=True),
                               pairs=pairs)
        except (FinetuneError, InputError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        if launched_rank() != 0:  # rank 0 reports
            return
        shown = {k: v for k, v in row.items() if k.startswith("test_") and isinstance(v, float)}
        click.echo("test: " + "  ".join(f"{k[5:]}={v:.4f}" for k, v in shown.items()))
        import pandas as pd

        _finish_run(out, pd.read_csv(f"{out}/leaderboard.csv"),
                    "regression" if "test_mae" in row else "classification")


@main.command()
@click.option("--head-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="One head's folder written by fit-head or finetune (OUT/<features>/<head>).")
@click.option("--cache", "cache_path", type=click.Path(), help="Cache to predict on (heads fitted by fit-head).")
@input_options(required=False, help_suffix=": raw sequences for a fine-tuned model")
@device_option()
@trust_head_option
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="CSV to write (default: stdout).")
@pair_options
def predict(head_dir, cache_path, input_path, fmt, seq_col, id_col, split, device, trust_head,
            out_file, ref_col, alt_col, site_col, genome, variant_window, strand_col, on_mismatch):
    """Apply a fitted head to a cache, or a fine-tuned model to raw sequences.

    A head from fit-head needs a cache made with the same model and layer; a fine-tuned
    model carries its backbone and reads sequences itself.

    \b
    Examples:
      python cli.py predict --head-dir runs/ph/mean/mlp3 --cache new_samples.zarr --out preds.csv
      python cli.py predict --head-dir runs/ph/finetune-mean-u2/mlp3 --input new.parquet \\
          --seq-col reads --id-col sample_id --out preds.csv
      python cli.py predict --head-dir runs/mapsy/finetune-delta-mean-u2/mlp3 --input new_pairs.csv \\
          --ref-col WT_SEQ --alt-col MUT_SEQ --id-col ID --out preds.csv
    """
    from heads.data import DataError
    from heads.predict import is_pair_model, predict_cache, predict_pairs, predict_sequences, \
        read_head_config
    from heads.saving import HeadLoadError

    if (cache_path is None) == (input_path is None):
        raise click.UsageError("give --cache (a head from fit-head) or --input (a fine-tuned model)")
    try:
        if cache_path:
            table = predict_cache(head_dir, cache_path, trust_head)
        else:
            config = read_head_config(head_dir)
            carried = [*config.get("options", {}).get("numeric_cols", []),
                       *config.get("options", {}).get("category_cols", [])]
            if is_pair_model(config):
                if not (ref_col or alt_col or genome):
                    raise InputError(f"{head_dir} was fine-tuned on variant pairs: give them as at "
                                     "training (--ref-col/--alt-col, or --genome)")
                pairs = _read_pairs(input_path, ref_col, alt_col, site_col, id_col, carried, genome,
                                    variant_window, strand_col, on_mismatch, seq_col)
                table = predict_pairs(head_dir, pairs, str(resolve_device(device)))
            else:
                records = record_reader(input_path, fmt, seq_col, id_col, carried, split)
                table = predict_sequences(head_dir, records, str(resolve_device(device)))
    except (CacheError, DataError, InputError, HeadLoadError) as exc:
        raise click.ClickException(str(exc)) from exc
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out_file, index=False)
        click.echo(f"wrote {len(table)} predictions to {out_file}", err=True)
    else:
        click.echo(table.to_csv(index=False), nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def report(run_dir, open_browser):
    """Write RUN_DIR/report.html: one self-contained page for a fit-head/finetune --out folder.

    The verdict (best embedding head vs best baseline, chosen on validation, with a 95%
    interval), the leaderboard with intervals, every head's plots, the cache, and the exact
    commands and versions.

    \b
    Example:
      python cli.py report runs/demo
    """
    from heads.report import write_report

    try:
        path = write_report(run_dir)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")
    if open_browser:
        click.launch(str(path))


if __name__ == "__main__":
    sys.exit(main())
