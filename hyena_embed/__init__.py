"""hyena-embed: HyenaDNA embeddings, cached, and the heads trained on them."""
__version__ = "0.1.0"

from .backbone import HyenaDNA  # noqa: E402,F401
from .config import HyenaConfig  # noqa: E402,F401
from .loading import LoadedModel, ModelLoadError, load_model  # noqa: E402,F401
from .registry import REGISTRY, get_spec  # noqa: E402,F401
from .tokenizer import Tokenizer  # noqa: E402,F401
from .api import embed  # noqa: E402,F401
