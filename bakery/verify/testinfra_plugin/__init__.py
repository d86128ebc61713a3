"""pytest plugins the verify runner loads into its testinfra runs (this directory goes on their PYTHONPATH)."""
