"""The program's modules: model files, runtimes, preprocessing, decoding, drawing, the Captioner API."""
