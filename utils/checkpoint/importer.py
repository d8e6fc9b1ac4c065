"""Turn an upstream checkpoint into an imported model in the model folder.

Layout (models/__init__.py): ``<model folder>/imported/<NAME>/model.onnx`` and ``vocab.json``, each with
its ``.sha256`` record like every model file. The folder is written complete under a temporary name and
then renamed into place, under the model folder's lock, so a model is either fully there or absent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models import DECODERS, IMPORTED_DECODER, IMPORTED_FOLDER, IMPORTED_NAME, IMPORTED_VOCAB
from utils.checkpoint.graph import DEFAULT_STEPS, INPUT_NAME, decoder_graph
from utils.checkpoint.infos import read_infos
from utils.checkpoint.newfc import MappedWeights, Sizes, architecture, check_shapes, map_weights
from utils.checkpoint.torch_format import read_state_dict
from utils.decoding.weights import RecoveryError, recover_weights
from utils.engine.model_files import checksum_record, sha256_bytes
from utils.files.atomic import sync_folder, write_atomic
from utils.files.lock import folder_lock
from utils.support.errors import CaptionError
from vocab import vocabulary_from_bytes

logger = logging.getLogger(__name__)

_PART = ".part-"


@dataclass(frozen=True)
class Imported:
    name: str
    folder: Path
    sizes: Sizes
    steps: int


def check_name(name: str) -> None:
    if name in DECODERS:
        raise CaptionError(f"--name {name} is a published model's name; choose another")
    if not IMPORTED_NAME.fullmatch(name):
        raise CaptionError(f"--name {name!r} is not a valid model name: use 1-40 lower-case letters, digits, "
                           "'_' or '-', starting with a letter or digit")


def import_checkpoint(checkpoint: Path, infos_path: Path, name: str, model_dir: Path) -> Imported:
    """Read, check and convert the checkpoint, then write the model; CaptionError for anything the user
    can act on (nothing is written then)."""
    check_name(name)
    model_dir = model_dir.absolute()
    dest = model_dir / IMPORTED_FOLDER / name
    if dest.exists():  # checked again under the lock; said early so a refused import reads nothing
        raise _exists(dest)
    infos = read_infos(infos_path)
    architecture(infos)  # another caption_model is refused before the (large) checkpoint is read
    # Shapes that do not fit the infos are refused before any weight is read or inflated.
    state = read_state_dict(checkpoint, lambda shapes: check_shapes(shapes, infos, checkpoint.name))
    mapped = map_weights(state, infos, checkpoint.name)
    onnx_bytes = decoder_graph(mapped.arrays, DEFAULT_STEPS).SerializeToString()
    _check_decoder(onnx_bytes, mapped)
    vocab_bytes = json.dumps({str(i): w for i, w in enumerate(infos.words, start=1)},
                             ensure_ascii=False).encode("utf-8")
    vocabulary_from_bytes(vocab_bytes)  # what every later load checks; a failure here is a bug
    _write(model_dir, dest, {IMPORTED_DECODER: onnx_bytes, IMPORTED_VOCAB: vocab_bytes})
    logger.info("imported %s (%s, %s) as %s", checkpoint, infos_path, infos.caption_model, dest)
    return Imported(name, dest, mapped.sizes, DEFAULT_STEPS)


def _exists(dest: Path) -> CaptionError:
    return CaptionError(f"a model named {dest.name} is already imported ({dest}); choose another --name, or "
                        "delete that folder to import it again")


def _check_decoder(onnx_bytes: bytes, mapped: MappedWeights) -> None:
    """The written graph must give back exactly the checkpoint's weights (beam search and sampling rely
    on that) and run on ONNX Runtime with the published interface."""
    try:
        recovered = recover_weights(onnx_bytes)
    except RecoveryError as error:
        raise AssertionError(f"the decoder graph hides its weights: {error}") from error
    for role, array in mapped.arrays.items():
        if not np.array_equal(getattr(recovered, role), array):
            raise AssertionError(f"the decoder graph does not carry the checkpoint's {role}")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    seq, logprobs = session.run(None, {INPUT_NAME: np.zeros((1, mapped.sizes.features), np.float32)})
    if seq.shape != (1, DEFAULT_STEPS) or logprobs.shape != (1, DEFAULT_STEPS, mapped.sizes.vocab_size + 1):
        raise AssertionError(f"the decoder graph gives {seq.shape} and {logprobs.shape}")


def _write(model_dir: Path, dest: Path, files: dict[str, bytes]) -> None:
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with folder_lock(model_dir):
            if dest.exists():
                raise _exists(dest)
            _sweep(parent)
            tmp = parent / f".{dest.name}{_PART}{os.urandom(4).hex()}"
            tmp.mkdir()
            try:
                for file_name, data in files.items():
                    write_atomic(tmp / file_name, data)
                    write_atomic(*checksum_record(tmp / file_name, sha256_bytes(data)))
                os.rename(tmp, dest)  # the model appears whole, or not at all
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            sync_folder(parent)
    except OSError as error:
        raise CaptionError(f"cannot write the imported model to {dest}: {error.strerror or error}") from None


def _sweep(parent: Path) -> None:
    """Temporary folders of imports that were killed midway; only an import holding the lock makes them."""
    for leftover in parent.glob(f".*{_PART}*"):
        if leftover.is_dir():
            logger.debug("removing %s, left by an interrupted import", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def describe(imported: Imported) -> str:
    s = imported.sizes
    return (f"imported {imported.name}: {s.vocab_size} words, input_encoding_size {s.encoding}, rnn_size {s.rnn}, "
            f"{s.features}-value image vectors, {imported.steps} steps; files in {imported.folder}. "
            f"Caption with --model {imported.name}")

