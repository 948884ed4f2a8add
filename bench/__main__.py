"""``python -m bench``: run the benchmarks (``--help`` for the options)."""

import sys

from bench.cli import main

sys.exit(main())
