"""finetune's options, checked before anything is read: one flat dataclass whose fields are
the command's options (defaults carry a comment), and `validate` naming every contradiction."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hyena_embed.precision import PRECISIONS
from .errors import FinetuneError
from .features import canonical_pair_set
from .freezing import parse_unfreeze
from .seqmodel import FINETUNE_POOLINGS
from .torch_mlp import ARCHS



def parse_pair_features(spec: str | list[str], pools=FINETUNE_POOLINGS) -> list[str]:
    """'delta-mean+variant' -> ['delta-mean', 'variant'], each checked and written op-first
    (the grammar is `heads.features`'; finetune has no kmer feature)."""
    return canonical_pair_set(spec, pools, extras=("variant",))

@dataclass
class FinetuneOptions:
    labels: list[str]
    head: str = "mlp3"  # linear, mlp2, mlp3, mlp2_ln
    pooling: str = "mean"  # mean, last, first, max, attention
    unfreeze: str = "2"  # 0..n_layer or "all"
    lr: float = 1e-3  # the head's learning rate
    encoder_lr_mult: float = 0.1  # the encoder learns at lr * this
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 16  # rows per forward pass
    grad_accum: int = 1  # forward passes per optimiser step
    clip_grad: float = 1.0  # max gradient norm; 0 = no clipping
    schedule: str = "cosine"  # cosine or plateau, after a linear warmup
    warmup: float = 0.05  # fraction of optimiser steps
    patience: int = 5  # epochs without a better validation loss before stopping
    loss: str = "smoothl1"  # regression: smoothl1 or mse; classification: cross-entropy
    dropout: float = 0.1
    precision: str = "auto"  # auto: fp16 + grad scaler on CUDA, float32 on CPU
    grad_checkpoint: bool = False  # recompute trainable blocks in backward: less memory
    rc_augment: bool = False  # reverse-complement training rows with probability 1/2
    shuffle_reads: bool = False  # permute the joined reads of multi-read rows each time
    features: list[str] | None = None  # variant pairs: fit-head's pair feature names
    site_window: int = 5  # variant pairs: sitewin is the mean over the site +- this many tokens
    variant_embedding: bool = False  # variant pairs: learned embedding of the ref and alt base
    group_col: str | None = None  # variant pairs: split by this column (e.g. gene), not by pair
    init_head: str | None = None  # a fit-head torch head folder to start from
    trust_head: bool = False  # allow a pickled head.joblib in init_head (old folders)
    numeric_cols: list[str] = field(default_factory=list)  # extra numeric inputs
    category_cols: list[str] = field(default_factory=list)  # extra categorical inputs
    task: str | None = None
    labels_file: str | None = None
    labels_id_col: str = "id"
    test_ids: str | None = None
    split_col: str | None = None
    packs: int | None = None
    special_tokens: str = "sep"
    truncation: str = "keep-end"
    seed: int = 42
    device: str = "auto"
    eval_batch_tokens: int | None = None
    plots: bool = True
    cache: str | None = None  # embed cache of the frozen blocks' per-position output

    def validate(self, n_layer: int, device: torch.device, pairs: bool = False):
        """Contradictions fail here, before any data is read."""
        self.unfreeze = str(parse_unfreeze(self.unfreeze, n_layer))
        if pairs:
            self.features = parse_pair_features(self.features or [f"delta-{self.pooling}"])
        pair_only = [flag for flag, used in (("--features", self.features),
                                             ("--variant-embedding", self.variant_embedding),
                                             ("--group-col", self.group_col)) if used]
        single_only = [flag for flag, used in (("--packs", self.packs),
                                               ("--shuffle-reads", self.shuffle_reads),
                                               ("--rc-augment", self.rc_augment)) if used]
        checks = [
            (not pairs and bool(pair_only),
             f"{', '.join(pair_only)} take variant pairs (--ref-col/--alt-col or --genome)"),
            (pairs and bool(single_only),
             f"{', '.join(single_only)} cannot be used with variant pairs"),
            (pairs and self.split_col is not None and self.group_col is not None,
             "give --split-col or --group-col, not both"),
            (self.head not in ARCHS, f"--head must be a torch head: {', '.join(ARCHS)}"),
            (self.pooling not in FINETUNE_POOLINGS,
             f"--pool must be one of {', '.join(FINETUNE_POOLINGS)}"),
            (self.schedule not in ("cosine", "plateau"), "--schedule must be cosine or plateau"),
            (self.loss not in ("smoothl1", "mse"), "--loss must be smoothl1 or mse"),
            (self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1,
             "--epochs, --batch-size and --grad-accum must be at least 1"),
            (not 0 <= self.warmup < 1, "--warmup is a fraction of the steps, in [0, 1)"),
            (self.lr <= 0 or self.encoder_lr_mult < 0, "--lr must be > 0 and --encoder-lr-mult >= 0"),
            (self.unfreeze == "0" and self.grad_checkpoint,
             "--grad-checkpoint saves memory in trainable blocks, and --unfreeze 0 has none"),
            (self.unfreeze == "0" and self.encoder_lr_mult != 0.1,
             "--encoder-lr-mult has no effect with --unfreeze 0 (the encoder is frozen)"),
            (self.unfreeze != "0" and self.encoder_lr_mult == 0,
             "--encoder-lr-mult 0 freezes the encoder: say --unfreeze 0 instead"),
            (self.init_head is not None and self.pooling == "attention",
             "--init-head takes a head fitted on pooled features; attention pooling has none"),
            (self.init_head is not None and bool(self.numeric_cols or self.category_cols
                                                 or self.variant_embedding),
             "--init-head cannot be combined with extra inputs (the head's input width differs)"),
            (self.cache is not None and self.unfreeze == "all",
             "--cache holds the frozen blocks' output, and --unfreeze all leaves none frozen"),
            (self.cache is not None and self.shuffle_reads,
             "--cache holds the states of the reads in their stored order; --shuffle-reads "
             "changes it each epoch, so it runs end to end only (drop --cache)"),
            (device.type == "cpu" and self.precision == "float16",
             "--precision float16 needs CUDA; on CPU use float32 (default) or bfloat16"),
            (self.precision not in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for failed, message in checks:
            if failed:
                raise FinetuneError(message)

    @property
    def run_name(self) -> str:
        what = "+".join(self.features) if self.features else self.pooling
        return f"finetune-{what}-u{self.unfreeze}"
