"""`python -m deepfm ...`: the `deepfm` command (deepfm.cli)."""

import sys

from deepfm.cli import main

sys.exit(main())
