"""Workflows: multi-step jobs built from the stage packages (pseudo-labelling, benchmarks, demo)."""
