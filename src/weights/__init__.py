"""Other sources' published weights: download, verify, convert, cache."""
