"""The command line, in one place: every flag (built from the options' dataclasses), the usage rules, and
the run of the mode asked for. ``image_captioning_pytorch.py`` installs the signal handling and calls
``main``."""
