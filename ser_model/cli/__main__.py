"""`python -m ser_model.cli`: the `ser` command line without the console script's registry hooks."""

import sys

from ser_model.cli import main

if __name__ == "__main__":
    sys.exit(main())
