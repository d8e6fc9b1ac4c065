"""int8 versions of the published models, made on this machine from the verified fp32 files.

- ``methods``: which int8 format this CPU runs best (from its feature flags);
- ``calibration``: the photos that set the activation ranges, fed as inference sees them;
- ``cache``: making a derived model file once and checking it on every load, like a download;
- ``features``: the int8 feature model (ResNet-101).

Heavy imports (onnxruntime.quantization) happen only when a file is actually made.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
