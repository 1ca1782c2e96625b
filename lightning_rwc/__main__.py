"""``python -m lightning_rwc`` runs the ``lightning-rwc`` command."""

import sys

from lightning_rwc.cli import main

sys.exit(main())
