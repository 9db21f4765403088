"""`python -m training.export ...`: the same as `python -m training export ...`."""

import sys

from training.export.cli import main_export

sys.exit(main_export(sys.argv[1:]))
