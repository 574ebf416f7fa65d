#!/usr/bin/env python3
"""Entry point: `python3 torchchat.py <command> ...` (see torchchat/cli.py)."""
import sys

from torchchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
