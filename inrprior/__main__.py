"""``python -m inrprior`` (and ``torchrun -m inrprior``) run the command line of :mod:`inrprior.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
