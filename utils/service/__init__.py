"""The caption service (``--serve``; docs/service.md): an HTTP API and a web page on the captioner's
workers. ``job.py`` (its settings) needs nothing beyond the standard library, so the command line can check the
flags without the optional web packages (requirements-serve.txt); the rest imports them."""
