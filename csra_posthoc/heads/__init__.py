"""The head: CSRA's score functions, the classifier applied per location, the exportable ``CSRAHead`` and head files."""
