"""The lab's one console entry point, ``cpikan-lab`` (lab/cli.py)."""
