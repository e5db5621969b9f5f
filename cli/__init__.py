"""aekit's command-line interface (installed as the `aekit.cli` package)."""
