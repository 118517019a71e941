"""`python -m bench`: every CPU benchmark, one command (see bench/README.md and bench/run_all.py)."""
import sys

from bench.run_all import main

sys.exit(main())
