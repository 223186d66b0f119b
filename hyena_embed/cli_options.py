"""Click pieces every stage's commands share: option sets composed once, and the one place
where a library error becomes a one-line message. Each stage's `commands.py` registers its
commands on the group in `cli.py` with these."""
from __future__ import annotations

import functools

import click

from cache.cli_errors import os_error_message, user_errors  # noqa: F401 (shared by every stage)
from cache.errors import UserError
from .distributed import launched_rank
from .inputs import FORMATS
from .loading import load_model
from .precision import PRECISIONS
from .variants import PairSource


def say(message: str):
    """Progress and reports go to stderr; results to stdout."""
    click.echo(message, err=True)


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


def compose(*decorators):
    """One decorator applying several, top to bottom as they would be written."""
    def apply(func):
        for decorate in reversed(decorators):
            func = decorate(func)
        return func
    return apply


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
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
        if loaded.random_init and launched_rank() == 0:  # once, not once per torchrun rank
            click.secho(f"WARNING: {model_spec} has RANDOM weights (seed {init_seed}); "
                        "results say nothing about the pretrained model.", fg="yellow", err=True)
        return func(*args, loaded=loaded, **kwargs)

    return wrapper


def pair_options(func):
    """Where variant pairs come from (embed, score-variants, finetune, predict): passed to the
    command as one `pairs: PairSource`."""
    @click.option("--ref-col", help="Variant pairs from a table: column of reference sequences.")
    @click.option("--alt-col", help="... and column of alternative sequences (same row).")
    @click.option("--site-col", help="0-based variant index in the sequences (default: first difference).")
    @click.option("--genome", type=click.Path(exists=True, dir_okay=False),
                  help="Variant pairs from --input VCF or chrom/pos/ref/alt table + this FASTA.")
    @click.option("--window", "variant_window", type=click.IntRange(1), default=501, show_default=True,
                  help="Window (nt) centred on each variant, with --genome.")
    @click.option("--strand-col", help="Column of +/- strands (with --genome): '-' windows are "
                                       "reverse-complemented.")
    @click.option("--on-mismatch", type=click.Choice(["skip", "error"]), default="skip",
                  show_default=True,
                  help="Reference allele not matching the genome: skip the row (counted) or stop.")
    @functools.wraps(func)
    def wrapper(*args, ref_col, alt_col, site_col, genome, variant_window, strand_col, on_mismatch,
                **kwargs):
        source = PairSource(ref_col, alt_col, site_col, genome, variant_window, strand_col, on_mismatch)
        return func(*args, pairs=source, **kwargs)

    return wrapper


def read_pairs_reporting(input_path, source: PairSource, id_col, label_cols, seq_col=None):
    """`variants.read_pairs`, its report printed once (rank 0)."""
    from .variants import read_pairs

    pairs, report = read_pairs(input_path, source, id_col, label_cols, seq_col)
    if launched_rank() == 0:
        say(report.line())
    return pairs


def input_options(required=True, help_suffix=""):
    """Where sequences come from: shared by every command that reads raw input."""
    return compose(
        click.option("--input", "input_path", required=required,
                     help="FASTA(.gz), CSV/TSV(.gz), Parquet file or folder, saved HF dataset, "
                          "or hub dataset name" + help_suffix + "."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="Input format; auto goes by the file name."),
        click.option("--seq-col", help="Column holding the sequence, or a list of reads per sample."),
        click.option("--id-col", help="Column of the input holding row ids (default: the row number)."),
        click.option("--split", help="Dataset split, for datasets that have several."))


def trust_head_option(func):
    return click.option("--trust-head", is_flag=True,
                        help="Allow a pickled head.joblib (folders from older versions): pickles can "
                             "run code, so only for folders you made yourself.")(func)


device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA when available, else CPU; HYENA_EMBED_DEVICE overrides), cpu, cuda, cuda:1, ...")


def precision_option(auto_help="auto: fp16 autocast on CUDA, float32 on CPU."):
    return click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                        help=auto_help + " float32 on CUDA: no TF32, the FFT in float64.")


special_tokens_option = click.option(
    "--special-tokens", type=click.Choice(["sep", "cls-sep", "none"]), default="sep", show_default=True,
    help="sep: seq+[SEP] as the -hf tokenizer; cls-sep: as the original code.")
on_long_option = click.option(
    "--on-long", type=click.Choice(["keep-end", "keep-start", "error"]), default="keep-end",
    show_default=True, help="Sequences over l_max: truncate (keep the end or start), or refuse.")
quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")
no_plots_option = click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
packs_option = click.option("--packs", type=int, help="Cut each multi-read sample into K rows of one group.")
site_window_option = click.option(
    "--site-window", type=click.IntRange(0), default=5, show_default=True,
    help="Variant pairs: the site's state, and sitewin the mean over the site +- K tokens.")


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


def task_option(func):
    return click.option("--task", type=click.Choice(["regression", "classification"]),
                        help="Inferred when unambiguous.")(func)


def label_split_options(split_col_help="Label column holding train/val/test."):
    """Labels joined from a table, and the fixed split: fit-head and finetune alike."""
    return compose(
        click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
                     help="Table to join labels from, on --labels-id-col (sample ids when rows are packs)."),
        click.option("--test-ids", type=click.Path(exists=True, dir_okay=False),
                     help="File of test sample ids (one per line, or a CSV's id column)."),
        click.option("--split-col", help=split_col_help),
        seed_option)
