"""The patched model and what users do with it: build, export, apply, predict, attention maps."""
