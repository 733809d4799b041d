"""Command lines behind the root scripts ``train.py`` and ``sample.py``."""
