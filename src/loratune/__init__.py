"""loratune: LoRA fine-tuning of pretrained transformers.

The engine's API is re-exported here::

    from loratune import LoraConfig, add_lora, save_adapter, load_adapter
"""

from loratune.errors import LoratuneError
from loratune.lora import *  # noqa: F403
from loratune.lora import __all__ as _lora_all

__version__ = "0.1.0"
__all__ = ["LoratuneError", *_lora_all]
