"""Image mode (``-i``): ``job.py`` what it is asked to do, ``inputs.py`` expanding ``-i`` into files,
``run.py`` captioning them through the steps and writers."""
