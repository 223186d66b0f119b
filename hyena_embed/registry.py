"""Named HyenaDNA models: the released checkpoints and their architectures."""
from __future__ import annotations

from dataclasses import dataclass

from .config import HyenaConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub_id: str  # the `-hf` release on the Hugging Face hub
    config: HyenaConfig
    description: str

    @property
    def context(self) -> int:
        """Nucleotides the model reads: l_max less the two special tokens."""
        return self.config.l_max - 2


def _spec(name, hub_id, d_model, n_layer, l_max, description):
    config = HyenaConfig(d_model=d_model, n_layer=n_layer, d_inner=4 * d_model, l_max=l_max)
    return ModelSpec(name, hub_id, config, description)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _spec("tiny-1k", "LongSafari/hyenadna-tiny-1k-seqlen-hf", 128, 2, 1026,
              "smallest model, 1 kb context; quick experiments"),
        _spec("tiny-1k-d256", "LongSafari/hyenadna-tiny-1k-seqlen-d256-hf", 256, 2, 1026,
              "tiny-1k with a 256-wide residual stream"),
        _spec("tiny-16k-d128", "LongSafari/hyenadna-tiny-16k-seqlen-d128-hf", 128, 2, 16386,
              "2 layers, 16 kb context"),
        _spec("small-32k", "LongSafari/hyenadna-small-32k-seqlen-hf", 256, 4, 32770,
              "4 layers, 32 kb context; the usual choice for reads and windows"),
        _spec("medium-160k", "LongSafari/hyenadna-medium-160k-seqlen-hf", 256, 8, 160002,
              "8 layers, 160 kb context"),
        _spec("medium-450k", "LongSafari/hyenadna-medium-450k-seqlen-hf", 256, 8, 450002,
              "8 layers, 450 kb context"),
        _spec("large-1m", "LongSafari/hyenadna-large-1m-seqlen-hf", 256, 8, 1000002,
              "8 layers, 1 Mb context"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registry names: {', '.join(REGISTRY)}") from None
