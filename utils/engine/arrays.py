"""Array types shared by the decoding code, the quantizer and the checkpoint importer."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
State = tuple[np.ndarray, np.ndarray]  # an LSTM's (h, c), one row per beam
