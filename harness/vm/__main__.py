"""``python -m harness.vm build|run|info`` (see harness.vm.cli)."""

import sys

from harness.vm.cli import main

sys.exit(main())
