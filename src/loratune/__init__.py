"""loratune: LoRA fine-tuning of pretrained transformers.

The engine's API and the training preparation are re-exported here::

    from loratune import LoraConfig, prepare_model, save_adapter, load_adapter

    model = prepare_model(model, LoraConfig(r=8, target_modules=["query", "value"]), precision="bf16")
"""

from loratune.errors import LoratuneError
from loratune.fastpath import restore_torch_kernels
from loratune.host_memory import keep_freed_memory
from loratune.lora import *  # noqa: F403
from loratune.lora import __all__ as _lora_all
from loratune.prepare import Preparation, preparation, prepare_model

__version__ = "0.1.0"
__all__ = [
    "LoratuneError",
    "Preparation",
    "keep_freed_memory",
    "preparation",
    "prepare_model",
    "restore_torch_kernels",
    *_lora_all,
]
