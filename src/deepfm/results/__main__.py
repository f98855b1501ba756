"""`python -m deepfm.results table|compare ...`: see deepfm.results.cli."""

import sys

from deepfm.results.cli import main

sys.exit(main())
