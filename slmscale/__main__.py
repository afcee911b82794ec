"""`python -m slmscale` — the same as the `slmscale` console script."""
import sys

from slmscale.cli import main

sys.exit(main())
