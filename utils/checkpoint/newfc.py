"""Which state-dict key plays which role in the decoder, and whether a checkpoint fits its infos.

The roles are those of utils/decoding/weights.py (``PARAMETER_NAMES``), so the graph written from them
carries the initializer names beam search recovers the weights by (docs/models.md §4). Each supported
``caption_model`` is one ``Architecture``: a key -> role table plus the checks the infos allow.
Upstream's older ``fc`` model (FCModel) has the same arithmetic and decoding loop under other names
(``img_embed.*`` for ``fc_embed.*``, ``core.*`` for ``_core.*``); supporting it would be one more
entry in ``ARCHITECTURES``, once checked against a real ``fc`` checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from utils.checkpoint.infos import Infos
from utils.checkpoint.unpickler import shown, shown_name
from utils.decoding.weights import PARAMETER_NAMES
from utils.engine.arrays import F32
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# The prefix torch.nn.DataParallel puts before every key of the model it wraps.
DATA_PARALLEL_PREFIX = "module."
# The published feature model's output width (docs/models.md §2).
PUBLISHED_FEATURE_SIZE = 2048


@dataclass(frozen=True)
class Architecture:
    caption_model: str
    roles: Mapping[str, str]  # state-dict key -> role (a key of utils.decoding.weights.PARAMETER_NAMES)


NEWFC = Architecture("newfc", {name: role for role, name in PARAMETER_NAMES.items()})
ARCHITECTURES: dict[str, Architecture] = {NEWFC.caption_model: NEWFC}


@dataclass(frozen=True)
class Sizes:
    vocab_size: int  # V
    encoding: int  # E
    rnn: int  # R
    features: int  # F


@dataclass(frozen=True)
class MappedWeights:
    """The decoder's parameters by role, float32, in PyTorch layouts, and their sizes."""

    arrays: dict[str, F32]
    sizes: Sizes


def architecture(infos: Infos) -> Architecture:
    found = ARCHITECTURES.get(infos.caption_model)
    if found is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise CaptionError(f"{infos.path}: caption_model is {shown(infos.caption_model)}; only {supported} "
                           "checkpoints (the FC family of the published models) can be imported")
    return found


def strip_data_parallel(state: Mapping[str, T]) -> dict[str, T]:
    """Keys without DataParallel's ``module.`` prefix; every key must have it or none may."""
    prefixed = [k.startswith(DATA_PARALLEL_PREFIX) for k in state]
    if not any(prefixed):
        return dict(state)
    if not all(prefixed):
        raise CaptionError("the checkpoint mixes keys with and without the 'module.' prefix")
    return {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}


def _expected_shapes(arch: Architecture, infos: Infos,
                     shapes: Mapping[str, tuple[int, ...]]) -> tuple[Sizes, dict[str, tuple[int, ...]]]:
    """The shape each role must have. Sizes the infos leave out are taken from the weights (and the
    rest of the checks then say whether the weights agree among themselves)."""
    key_of = {role: key for key, role in arch.roles.items()}

    def dim(role: str, axis: int) -> int:
        shape = shapes.get(key_of[role])
        return int(shape[axis]) if shape is not None and len(shape) > axis else -1

    v = infos.vocab_size
    e = infos.input_encoding_size if infos.input_encoding_size is not None else dim("embed", 1)
    r = infos.rnn_size if infos.rnn_size is not None else dim("h2h_w", 1)
    f = infos.fc_feat_size if infos.fc_feat_size is not None else dim("fc_w", 1)
    expected = {
        "embed": (v + 1, e), "fc_w": (e, f), "fc_b": (e,), "i2h_w": (5 * r, e), "i2h_b": (5 * r,),
        "h2h_w": (5 * r, r), "h2h_b": (5 * r,), "logit_w": (v + 1, r), "logit_b": (v + 1,),
    }
    return Sizes(v, e, r, f), expected


def check_shapes(shapes: Mapping[str, tuple[int, ...]], infos: Infos, checkpoint_name: str) -> Sizes:
    """Check the state dict's keys and shapes against ``infos``, before any weight is read; the sizes.

    Every difference is reported, in one line: missing and extra keys, shapes."""
    arch = architecture(infos)
    if infos.num_layers not in (None, 1):
        raise CaptionError(f"{infos.path}: num_layers is {infos.num_layers}; {arch.caption_model} has one LSTM layer")
    if infos.logit_layers not in (None, 1):
        raise CaptionError(f"{infos.path}: logit_layers is {infos.logit_layers}; only a single logit layer "
                           "(upstream's default) can be imported")
    try:
        shapes = strip_data_parallel(shapes)
    except CaptionError as error:
        raise CaptionError(f"{checkpoint_name}: {error}") from None
    missing = [k for k in arch.roles if k not in shapes]
    extra = [shown_name(k) for k in shapes if k not in arch.roles]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        shown_extra = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        problems.append(f"unexpected {shown_extra} (is it a {arch.caption_model} checkpoint?)")
    sizes, expected = _expected_shapes(arch, infos, shapes)
    described = (f"vocab_size {sizes.vocab_size}, input_encoding_size {sizes.encoding}, rnn_size {sizes.rnn}, "
                 f"fc_feat_size {sizes.features}")
    for key, role in arch.roles.items():
        shape = shapes.get(key)
        if shape is not None and tuple(shape) != expected[role]:
            problems.append(f"{key} has shape {_shape(shape)}, the infos ({described}) give {_shape(expected[role])}")
    if problems:
        raise CaptionError(f"{checkpoint_name} does not fit {infos.path.name}: {'; '.join(problems)}")
    return sizes


def map_weights(state: Mapping[str, np.ndarray], infos: Infos, checkpoint_name: str) -> MappedWeights:
    """Check ``state`` (a state dict) against ``infos`` and return its parameters by role.

    Keys and shapes as ``check_shapes``; then every weight must be finite floating point."""
    arch = architecture(infos)
    sizes = check_shapes({key: array.shape for key, array in state.items()}, infos, checkpoint_name)
    state = strip_data_parallel(state)
    problems = []
    for key in arch.roles:
        array = state[key]
        if not np.issubdtype(array.dtype, np.floating):
            problems.append(f"{key} holds {array.dtype} values, not floating point")
        elif not np.isfinite(array).all():
            problems.append(f"{key} holds non-finite values")
    if problems:
        raise CaptionError(f"{checkpoint_name} does not fit {infos.path.name}: {'; '.join(problems)}")
    if sizes.features != PUBLISHED_FEATURE_SIZE:
        logger.warning("%s takes %d-value image vectors; the published feature model gives %d, so it will "
                       "only run beside a feature model of its own width", checkpoint_name, sizes.features,
                       PUBLISHED_FEATURE_SIZE)
    arrays = {role: np.ascontiguousarray(state[key], dtype=np.float32) for key, role in arch.roles.items()}
    return MappedWeights(arrays, sizes)


def _shape(shape: tuple[int, ...]) -> str:
    shown_dims = [str(n) for n in shape[:8]] + (["…"] if len(shape) > 8 else [])
    return "(" + ", ".join(shown_dims) + ")"
