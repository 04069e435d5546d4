# TEMPORARY shim for the running cold validation (old argv); not committed
import sys
from harness.validate.guest import main
argv = sys.argv[1:]
if argv and argv[0] == "--guest":
    argv = argv[1:]
sys.exit(main(argv))
