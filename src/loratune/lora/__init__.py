"""The LoRA engine: torch only, it knows nothing of data, training or HTTP.

``y = W x + b + (alpha / r) * B A dropout(x)``, with ``W`` frozen and only ``A``, ``B`` (and the
task head in ``modules_to_save``) trained.
"""

from loratune.lora.config import ALL_LINEAR, LoraConfig, module_matches
from loratune.lora.io import (
    load_adapter,
    peft_config_dict,
    read_adapter_config,
    read_adapter_shapes,
    save_adapter,
    write_adapter,
)
from loratune.lora.layer import BASE, LoraLinear, ModulesToSaveWrapper
from loratune.lora.model import (
    ParameterReport,
    active_adapter,
    add_lora,
    delete_adapter,
    disable_adapter,
    list_adapters,
    merge_adapter,
    merge_and_unload,
    mixed_adapters,
    parameter_report,
    set_adapter,
    unmerge_adapter,
)

__all__ = [
    "ALL_LINEAR",
    "BASE",
    "LoraConfig",
    "LoraLinear",
    "ModulesToSaveWrapper",
    "ParameterReport",
    "active_adapter",
    "add_lora",
    "delete_adapter",
    "disable_adapter",
    "list_adapters",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "mixed_adapters",
    "module_matches",
    "parameter_report",
    "peft_config_dict",
    "read_adapter_config",
    "read_adapter_shapes",
    "save_adapter",
    "set_adapter",
    "unmerge_adapter",
    "write_adapter",
]
