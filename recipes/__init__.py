"""Recipes that reproduce the papers' settings: each `main()` parses absl flags into a frozen
config and calls an importable `run(config)` that returns and writes the results."""
