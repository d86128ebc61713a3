"""`python3 -m webapp`: the entry point systemd's ExecStart= runs."""

import sys

from webapp.server import main

if __name__ == "__main__":
    sys.exit(main())
