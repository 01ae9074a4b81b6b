"""``python -m cpikan.tiling check MODULE:FACTORY --channels C``: see cpikan/tiling/check.py."""

import sys

from cpikan.tiling.check import main

if len(sys.argv) < 2 or sys.argv[1] != "check":
    print("usage: python -m cpikan.tiling check MODULE:FACTORY --channels C [--weights W.safetensors] [--max-memory 1.5GB] [--tile N]",
          file=sys.stderr)
    sys.exit(2)
sys.exit(main(sys.argv[2:]))
