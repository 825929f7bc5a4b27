"""Command-line tools beside the entry points: launch checks, MindRecord conversion,
the benchmark, the sizing table, the quick start's data."""
