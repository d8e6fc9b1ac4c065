"""Importing one's own ImageCaptioning.pytorch checkpoint (docs/models.md §10) without torch.

One module per concern: ``unpickler`` (the only place pickle data is interpreted, through an allowlist),
``torch_format`` (torch's zip and legacy files), ``infos`` (the ``infos_*.pkl`` file), ``newfc`` (which
state-dict key plays which role, checked against the infos), ``graph`` (the decoder ONNX graph),
``importer`` (the files written into the model folder) and ``cli`` (the command-line option).
"""
