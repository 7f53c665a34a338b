"""The statistics cache: keys, the on-disk store, and the memo of what building a model resolved to."""
