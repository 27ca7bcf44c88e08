"""``python -m dicomstore``: the same as the ``dicomstore`` console script (review58
L7: operators' scripts call it so; only ``python -m dicomstore.cli`` worked)."""

import sys

from dicomstore.cli import main

sys.exit(main())
