"""Training data: loading a `--dataset` source (loading), feeding the steps (feeds), packs larger than memory (pack)."""
