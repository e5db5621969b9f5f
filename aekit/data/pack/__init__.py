"""Packs: datasets larger than memory, written once as uint8 TFRecord shards with dataset.json, streamed to training.

schema (the format), writer (`pack`), sources (what it reads), reader (`PackedDataset`), records and files.
"""
