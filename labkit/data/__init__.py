"""The embedded default corpus: a synthetic high-density world and its low-density control, real
code, curation of any text source, mixing, a BPE tokenizer and token shards. See `build.py`."""
