"""Partial unfreezing as small composable helpers, and the optimiser's parameter groups.

`--unfreeze 0` trains the head only, `--unfreeze N` also the last N blocks and the final
LayerNorm, `--unfreeze all` everything (token embeddings included). The language-model head is
never trained: fine-tuning does not use it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hyena_embed.backbone import HyenaDNA


def parse_unfreeze(value: str | int, n_layer: int) -> int | str:
    """'all' or an integer 0..n_layer; anything else is a plain error."""
    if str(value).lower() == "all":
        return "all"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--unfreeze takes 0..{n_layer} or all, not {value!r}") from None
    if not 0 <= n <= n_layer:
        raise ValueError(f"--unfreeze {n}: this model has {n_layer} blocks; "
                         f"choose 0..{n_layer}, or all")
    return n


def freeze_all_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def unfreeze_last_blocks_(model: HyenaDNA, n: int) -> HyenaDNA:
    """The last n blocks and, when n > 0, the final LayerNorm become trainable."""
    if n > 0:
        for block in model.backbone.layers[-n:]:
            unfreeze_(block)
        unfreeze_(model.backbone.ln_f)
    return model


def apply_unfreeze_(model: HyenaDNA, unfreeze: int | str) -> HyenaDNA:
    freeze_all_(model)
    if unfreeze == "all":
        unfreeze_(model.backbone)
    else:
        unfreeze_last_blocks_(model, unfreeze)
    return model


def first_trainable_block(model: HyenaDNA) -> int:
    """Index of the first block with a trainable parameter (n_layer when none)."""
    for i, block in enumerate(model.backbone.layers):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(model.backbone.layers)


@dataclass
class ParamGroup:
    name: str
    params: list
    lr: float
    weight_decay: float

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)


def _no_decay(name: str, param) -> bool:
    # biases, LayerNorm weights, the filter's Sin frequencies and skip terms: no weight decay
    return param.ndim < 2 or "norm" in name or name.endswith("freq")


def parameter_groups(head: nn.Module, encoder: nn.Module, lr: float, encoder_lr_mult: float,
                     weight_decay: float) -> list[ParamGroup]:
    """Head at lr, trainable encoder parameters at lr * encoder_lr_mult; decay split off."""
    groups = []
    for part, module, part_lr in (("head", head, lr), ("encoder", encoder, lr * encoder_lr_mult)):
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if not _no_decay(n, p)]
        plain = [p for n, p in named if _no_decay(n, p)]
        if decay:
            groups.append(ParamGroup(f"{part}", decay, part_lr, weight_decay))
        if plain:
            groups.append(ParamGroup(f"{part} (no decay)", plain, part_lr, 0.0))
    return groups


def describe_groups(groups: list[ParamGroup], frozen: int) -> str:
    lines = [f"{'parameter group':<22}{'tensors':>8}{'parameters':>12}{'lr':>10}{'decay':>7}"]
    for g in groups:
        lines.append(f"{g.name:<22}{len(g.params):>8}{g.n_params:>12,}{g.lr:>10.2e}{g.weight_decay:>7}")
    lines.append(f"{'frozen':<22}{'':>8}{frozen:>12,}")
    return "\n".join(lines)
