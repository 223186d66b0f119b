"""Command line for hyena-embed: the group, and each stage's commands registered on it.

Each stage keeps its commands beside its library (`hyena_embed/commands.py`: models,
show-model, embed; `cache/commands.py`: info, verify; `heads/commands.py`: fit-head, predict,
report, score-variants; `heads/finetune_commands.py`: finetune), composed from the shared option sets of
`hyena_embed/cli_options.py`. `python cli.py --help` lists them.
"""
from __future__ import annotations

import logging

import click

import cache.commands
import heads.commands
import heads.finetune_commands
import hyena_embed.commands
from hyena_embed import cpu


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


for stage in (hyena_embed.commands, cache.commands, heads.commands, heads.finetune_commands):
    stage.register(main)


if __name__ == "__main__":
    main()
