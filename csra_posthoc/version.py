"""The package version, in a module of its own: the package ``__init__``, the CLI's ``--version``
and the cache keys (:mod:`csra_posthoc.cache.resolution`) all read it without importing each other."""

__version__ = "0.1.0"
