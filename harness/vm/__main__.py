"""``python -m harness.vm build|run|info`` (see harness.vm.cli)."""
import sys

from .cli import main

sys.exit(main())
