"""The program's modules: model files, runtimes, preprocessing, decoding, drawing, the Captioner API."""

__version__ = "0.26.0"
