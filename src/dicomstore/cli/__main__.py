"""``python -m dicomstore.cli``: the same as the ``dicomstore`` console script."""

import sys

from dicomstore.cli import main

sys.exit(main())
