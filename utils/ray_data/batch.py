"""Captioning a batch of rows: the callable class Ray Data's ``map_batches`` runs on each actor
(docs/large-runs.md), usable on any batch of columns without Ray.

A batch is a ``dict`` of numpy arrays (Ray Data's ``batch_format="numpy"``) or a pandas ``DataFrame``,
with a ``path`` column and either ``bytes`` (each image file's bytes, as ``read_binary_files`` gives
them; decoded exactly as the command line decodes files) or ``image`` (decoded RGB arrays, as
``read_images`` gives them). The same batch comes back with three columns more: ``caption`` (text, or
None), ``confidence`` (float, NaN where there is no caption) and ``error`` (None, or why that row has
no caption); with ``records=True`` also ``indices`` (the caption's vocabulary indices, or None) and
``backend`` (the runtime that made it), which a caption record holds (utils/output/records.py). A row
that cannot be decoded or captioned fails alone: its error stays in its row. A batch
may bring an ``error`` column of its own (a read step before this one: utils/ray_data/run.py): a row with
an error there keeps it and is not captioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from utils.decoding.options import DecodingOptions
from utils.engine.captioner import Captioner, CaptionerOptions, CaptionItem
from utils.engine.preprocess import decode_image_bytes
from utils.support.errors import CaptionError, first_line
from utils.support.text import shortened

MAX_ERROR_CHARS = 500  # a row's error: one line, about a file and what to do


class BatchCaptioner:
    """Loads the models once (per Ray actor: model files found in, or fetched to, the model folder of
    the node it runs on, and verified as everywhere), then captions batch after batch."""

    def __init__(self, options: CaptionerOptions | None = None, decoding: DecodingOptions | None = None,
                 drop: Sequence[str] = (), records: bool = False) -> None:
        self.captioner = Captioner(options)
        self.decoding = decoding or DecodingOptions()
        self.drop = tuple(drop)  # columns left out of the result (the image bytes, once captioned)
        self.records = records  # also the columns a caption record needs: indices, backend

    def __call__(self, batch: Any) -> Any:
        columns = batch if isinstance(batch, dict) else {name: batch[name].to_numpy() for name in batch.columns}
        captions, confidences, errors, indices = self.caption_columns(columns)
        added = {"caption": captions, "confidence": confidences, "error": errors}
        if self.records:
            added["indices"] = indices
            added["backend"] = np.full(len(captions), self.captioner.backend, dtype=object)
        if isinstance(batch, dict):
            return {**{k: v for k, v in batch.items() if k not in self.drop}, **added}
        return batch.drop(columns=[c for c in self.drop if c in batch.columns]).assign(**added)

    def caption_columns(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
        """The caption, confidence, error and indices of each row of ``columns``, in row order."""
        if "path" not in columns:
            raise CaptionError("the batch has no 'path' column")
        kind = "bytes" if "bytes" in columns else "image" if "image" in columns else None
        if kind is None:
            raise CaptionError("the batch has neither a 'bytes' nor an 'image' column")
        paths, sources = columns["path"], columns[kind]
        rows = len(paths)
        captions = np.full(rows, None, dtype=object)
        confidences = np.full(rows, np.nan, dtype=np.float64)
        errors = np.full(rows, None, dtype=object)
        indices = np.full(rows, None, dtype=object)
        todo: list[int] = []  # the rows to caption: those that bring no error of their own
        given = columns.get("error")
        for row in range(rows):
            # A column of no errors at all comes through Ray as None or NaN throughout: only text is one.
            if given is not None and isinstance(given[row], str) and given[row]:
                errors[row] = shortened(given[row], MAX_ERROR_CHARS)
            else:
                todo.append(row)

        def read(row: int) -> np.ndarray:
            try:
                return _decoded(sources[row], str(paths[row])) if kind == "bytes" else _from_rgb(sources[row])
            except CaptionError:
                raise
            except Exception as exc:  # a value of another type in the column: that row's problem only
                raise CaptionError(f"{shortened(str(paths[row]), MAX_ERROR_CHARS)}: {first_line(exc)}") from None

        for done in self.captioner.caption_many((CaptionItem(row, read) for row in todo), self.decoding):
            row = done.source
            if done.result is None:
                message = str(done.error) if done.error is not None else "no caption"
                named = message.startswith(str(paths[row]))  # the decoder's messages name the file first
                errors[row] = shortened(message if named else f"{paths[row]}: {message}", MAX_ERROR_CHARS)
                continue
            captions[row] = done.result.caption
            indices[row] = done.result.indices
            if done.result.confidence is not None:
                confidences[row] = done.result.confidence
        return captions, confidences, errors, indices


def _decoded(data: Any, name: str) -> np.ndarray:
    if data is None:
        raise CaptionError(f"{name}: no bytes")
    return decode_image_bytes(data if isinstance(data, bytes | np.ndarray) else bytes(data), name)


def _from_rgb(image: Any) -> np.ndarray:
    """An ``image`` cell (RGB or RGBA as Ray's read_images and PIL give it, or grey) as the BGR the
    models were trained on."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, 2::-1])
    return array


