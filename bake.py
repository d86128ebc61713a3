#!/usr/bin/env python3
"""bake.py: the command line of bakery (see README.md). All logic lives in bakery/."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE / ".venv" / "bin" / "python"

# Run inside the project's virtual environment (made by `make setup`) whatever python started us.
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

sys.path.insert(0, str(HERE))
from bakery.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
