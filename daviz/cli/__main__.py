"""`python -m daviz.cli`: the `daviz` command."""
import sys

from . import main

sys.exit(main())
