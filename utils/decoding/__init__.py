"""Decoding the published greedy decoders with upstream's options (docs/decoding.md)."""

from utils.decoding.options import DEFAULT_BEAM_SIZE, DecodingOptions, LengthPenalty, SampleMethod

__all__ = ["DEFAULT_BEAM_SIZE", "DecodingOptions", "LengthPenalty", "SampleMethod"]
