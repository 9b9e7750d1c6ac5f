"""Save, load and share models: `save_pretrained` / `from_pretrained` / `push_to_hub`, one concern per module.

A saved model is a folder (or a Hugging Face Hub model repo) holding four files:

- `model.safetensors`: the full state dict, float32, safetensors only (nothing is ever unpickled);
- `config.json`: the architecture, format version, `ModelConfig`, recipe and metrics (`serialization.py`);
- `README.md`: a generated model card (`card.py`);
- `preprocessor_config.json`: what transformers' `AutoImageProcessor` reads (`dynamic_atss.integrations.transformers`).

| module | concern |
|---|---|
| `serialization.py` | `config.json` schema, strict state-dict loading, the model-class registry |
| `folder.py` | write / read a saved-model folder |
| `card.py` | the generated model card |
| `download.py` | `load_pretrained`: folders and Hub repos (`snapshot_download`, one revision, one call) |
| `push.py` | `push_model_dir`: one commit with the four files |
| `mixin.py` | `HubMixin`, inherited by the model class |

The dependency goes one way: the model class imports `HubMixin`; nothing here imports the model code (the
class to rebuild is registered by inheriting the mixin).
"""

from ..locations import is_model_folder
from .card import CARD_MARKER, CITATION, generate_model_card
from .download import HubFilesMissingError, HubUnreachableError, load_pretrained, offline_requested
from .folder import load_model_dir, save_model_dir
from .mixin import HubMixin
from .push import push_model_dir
from .serialization import (
    ARCHITECTURE,
    CARD_NAME,
    CLASSIFIER_PREFIX,
    CONFIG_NAME,
    FORMAT_VERSION,
    LIBRARY_NAME,
    LOAD_TIME_OVERRIDES,
    MODEL_TYPE,
    PREPROCESSOR_NAME,
    WEIGHTS_NAME,
    ConfigFormatError,
    FixedFieldMismatchError,
    StateDictMismatchError,
    build_model_from_state_dict,
    check_state_dict,
    config_to_json,
    parse_config,
    read_config,
    register_model_class,
    registered_model_class,
)

__all__ = [
    "ARCHITECTURE", "CARD_MARKER", "CARD_NAME", "CITATION", "CLASSIFIER_PREFIX", "CONFIG_NAME", "FORMAT_VERSION",
    "LIBRARY_NAME", "LOAD_TIME_OVERRIDES", "MODEL_TYPE", "PREPROCESSOR_NAME", "WEIGHTS_NAME", "ConfigFormatError", "FixedFieldMismatchError", "HubFilesMissingError", "HubMixin",
    "HubUnreachableError", "StateDictMismatchError", "build_model_from_state_dict", "check_state_dict",
    "config_to_json", "generate_model_card", "is_model_folder", "load_model_dir", "load_pretrained",
    "offline_requested", "parse_config", "push_model_dir", "read_config", "register_model_class",
    "registered_model_class", "save_model_dir",
]
