"""`python -m keras_cmt ...`: the same command line as `keras-cmt` (keras_cmt.cli)."""

import sys

from keras_cmt.cli import main

if __name__ == "__main__":
    sys.exit(main())
