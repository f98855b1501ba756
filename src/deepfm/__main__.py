"""`python -m deepfm ...`: the `deepfm` command (deepfm.command)."""

import sys

from deepfm.command import main

sys.exit(main())
