"""The engine every mode runs on: the models' files, the runtimes, preprocessing, which options go
together, and the ``Captioner`` with its bounded parallel pipeline."""
