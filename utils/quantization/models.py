"""What ``--precision int8`` runs: the feature model, and the decoder where it pays, for this CPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from utils.decoding.decoder import StepModelFactory
from utils.decoding.step_model import OrtStepModel
from utils.engine.model_files import VerifiedFile
from utils.quantization.decoder import int8_decoder_model, int8_decoder_pays, int8_step_model
from utils.quantization.features import int8_feature_model
from utils.quantization.methods import cpu_flags, method_for_flags

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Models:
    feature: VerifiedFile  # the int8 feature model
    decoder: VerifiedFile  # the int8 decoder, or the fp32 one on CPUs where int8 does not pay
    step_model: StepModelFactory  # beam search's step model, quantized like the decoder


def int8_models(feature: VerifiedFile, decoder: VerifiedFile, progress: bool = True) -> Int8Models:
    """The int8 files made from the verified fp32 ones (or found in the cache; docs/int8.md)."""
    flags = cpu_flags()  # read once: both choices depend on it
    int8_feature = int8_feature_model(feature, progress, method_for_flags(flags))
    if int8_decoder_pays(flags):
        return Int8Models(int8_feature, int8_decoder_model(decoder, progress), int8_step_model)
    logger.debug("the decoder stays fp32 on this CPU (no VNNI)")
    return Int8Models(int8_feature, decoder, OrtStepModel)
