"""`python -m dicomnode.cli`: the same as the `dicomnode` command."""
import sys

from dicomnode.cli import main

sys.exit(main())
