"""Registry of the published model files, and where they are kept.

Downloaded files land in this folder (git-ignored) unless ``--model-dir`` or the
``IMAGE_CAPTIONING_MODEL_DIR`` environment variable says otherwise.
"""

from __future__ import annotations

import os
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

MODEL_DIR_ENV = "IMAGE_CAPTIONING_MODEL_DIR"
# A mirror serving every file under one HTTPS folder (for sites that cannot reach the bucket).
MIRROR_ENV = "IMAGE_CAPTIONING_MIRROR"

FileKind = Literal["onnx", "prototxt", "vocab"]


@dataclass(frozen=True)
class ModelFile:
    name: str
    url: str
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


def model_set(decoder: str, with_prototxt: bool) -> ModelSet:
    """Files for ``decoder``; ``.prototxt`` files only when the ailia SDK will read them."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown model {decoder!r}; choose one of {', '.join(DECODERS)}")
    return ModelSet(
        feature=_network_files("model_feat", with_prototxt),
        decoder=_network_files(f"model_{decoder}", with_prototxt),
        vocab=ModelFile("vocab.json", _url("vocab.json", VOCAB_URL), "vocab"),
    )
