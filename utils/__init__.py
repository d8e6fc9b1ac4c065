"""image_captioning_pytorch as a library: what this package exports is its public API (docs/api.md);
everything under it is the program's own and may change.

The names are imported on first use, so that ``import utils`` (and every command line, which imports
its modules through this package) costs nothing: the runtimes load only when a Captioner is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.26.0"

# Each public name and the module that defines it.
_PUBLIC = {
    "Captioner": "utils.engine.captioner",
    "Captioned": "utils.engine.captioner",
    "CaptionItem": "utils.engine.captioner",
    "CaptionerOptions": "utils.engine.caption_types",
    "CaptionResult": "utils.engine.caption_types",
    "RankedCaption": "utils.engine.caption_types",
    "default_workers": "utils.engine.caption_types",
    "DecodingOptions": "utils.decoding.options",
    "RuntimeOptions": "utils.engine.runtime",
    "BatchCaptioner": "utils.ray_data.batch",
    "CaptionError": "utils.support.errors",
    "OptionConflict": "utils.engine.compatibility",
    "StopRequest": "utils.support.stopping",
    "read_image": "utils.engine.preprocess",
}
__all__ = [  # the names of _PUBLIC (tests/test_architecture.py checks that the two agree)
    "__version__", "BatchCaptioner", "CaptionError", "CaptionItem", "CaptionResult", "Captioned", "Captioner",
    "CaptionerOptions", "DecodingOptions", "OptionConflict", "RankedCaption", "RuntimeOptions", "StopRequest",
    "default_workers", "read_image",
]

if TYPE_CHECKING:
    from utils.decoding.options import DecodingOptions
    from utils.engine.caption_types import CaptionerOptions, CaptionResult, RankedCaption, default_workers
    from utils.engine.captioner import Captioned, Captioner, CaptionItem
    from utils.engine.compatibility import OptionConflict
    from utils.engine.preprocess import read_image
    from utils.engine.runtime import RuntimeOptions
    from utils.ray_data.batch import BatchCaptioner
    from utils.support.errors import CaptionError
    from utils.support.stopping import StopRequest


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
