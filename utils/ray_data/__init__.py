"""Ray Data mode (``--ray``; docs/large-runs.md): ``job.py`` what it is asked to do, ``batch.py`` the
callable class each actor runs, ``run.py`` the inputs, the runtime and the captions file."""
