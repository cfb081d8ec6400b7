"""``python -m simple_rlhf`` is the same as the ``simple-rlhf`` command."""

import sys

from simple_rlhf.cli.main import main

sys.exit(main())
