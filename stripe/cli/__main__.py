"""``python -m stripe.cli …``: the same as ``stripe …`` (and ``python -m stripe …``)."""
import sys

from . import main

sys.exit(main())
