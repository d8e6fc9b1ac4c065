"""Registry of the published model files, the imported ones, and where they are kept.

Downloaded files land in this folder (git-ignored) unless ``--model-dir`` or the
``IMAGE_CAPTIONING_MODEL_DIR`` environment variable says otherwise. A decoder imported from one's own
checkpoint (``--import-checkpoint``, utils/checkpoint/) lives in ``imported/<NAME>/`` of that folder
(``model.onnx`` and ``vocab.json``), beside the published files and never under one of their names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BUCKET_URL = "https://storage.googleapis.com/ailia-models/image_captioning_pytorch/"
VOCAB_URL = (
    "https://raw.githubusercontent.com/ailia-ai/ailia-models/master/"
    "image_captioning/image_captioning_pytorch/vocab.json"
)
DECODERS = ("fc", "fc_rl", "fc_nsc")
DEFAULT_DECODER = "fc_nsc"

# Imported decoders: <model folder>/imported/<NAME>/{model.onnx,vocab.json}. Lower case only, so that two
# names never share a folder on a case-insensitive file system.
IMPORTED_FOLDER = "imported"
IMPORTED_DECODER = "model.onnx"
IMPORTED_VOCAB = "vocab.json"
IMPORTED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")

MODEL_DIR_ENV = "IMAGE_CAPTIONING_MODEL_DIR"
# A mirror serving every file under one HTTPS folder (for sites that cannot reach the bucket).
MIRROR_ENV = "IMAGE_CAPTIONING_MIRROR"

FileKind = Literal["onnx", "prototxt", "vocab"]


@dataclass(frozen=True)
class ModelFile:
    name: str  # the path under the model folder
    url: str | None  # None: an imported model's file, which no server has
    kind: FileKind


def default_model_dir() -> Path:
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parent


def _url(name: str, default: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return mirror.rstrip("/") + "/" + name if mirror else default


def _network_files(stem: str, with_prototxt: bool) -> list[ModelFile]:
    onnx_name = f"{stem}.onnx"
    files = [ModelFile(onnx_name, _url(onnx_name, BUCKET_URL + onnx_name), "onnx")]
    if with_prototxt:
        proto = f"{onnx_name}.prototxt"
        files.append(ModelFile(proto, _url(proto, BUCKET_URL + proto), "prototxt"))
    return files


@dataclass(frozen=True)
class ModelSet:
    """The files one decoder needs, split by role."""

    feature: list[ModelFile]
    decoder: list[ModelFile]
    vocab: ModelFile

    @property
    def all(self) -> list[ModelFile]:
        return [*self.feature, *self.decoder, self.vocab]


def is_imported(decoder: str) -> bool:
    """Whether ``decoder`` names an imported model (a valid name that is not a published one)."""
    return decoder not in DECODERS and IMPORTED_NAME.fullmatch(decoder) is not None


def imported_names(model_dir: Path) -> list[str]:
    """The imported models found in ``model_dir``, sorted; an unreadable folder has none."""
    try:
        folders = list((model_dir / IMPORTED_FOLDER).iterdir())
    except OSError:
        return []
    return sorted(f.name for f in folders if is_imported(f.name) and (f / IMPORTED_DECODER).is_file())


def model_choices(model_dir: Path) -> str:
    """The models ``--model`` takes with this model folder, for help and error lines."""
    imported = imported_names(model_dir)
    return ", ".join(DECODERS) + (f"; imported in {model_dir}: {', '.join(imported)}" if imported else "")


def _imported_set(decoder: str, with_prototxt: bool) -> ModelSet:
    folder = f"{IMPORTED_FOLDER}/{decoder}/"
    return ModelSet(
        feature=_network_files("model_feat", with_prototxt),
        decoder=[ModelFile(folder + IMPORTED_DECODER, None, "onnx")],
        vocab=ModelFile(folder + IMPORTED_VOCAB, None, "vocab"),
    )


def model_set(decoder: str, with_prototxt: bool) -> ModelSet:
    """Files for ``decoder``; ``.prototxt`` files only when the ailia SDK will read them (imported
    decoders have none: they run on ONNX Runtime)."""
    if is_imported(decoder):
        return _imported_set(decoder, with_prototxt)
    if decoder not in DECODERS:
        raise ValueError(f"unknown model {decoder!r}; choose one of {', '.join(DECODERS)} or an imported name")
    return ModelSet(
        feature=_network_files("model_feat", with_prototxt),
        decoder=_network_files(f"model_{decoder}", with_prototxt),
        vocab=ModelFile("vocab.json", _url("vocab.json", VOCAB_URL), "vocab"),
    )
