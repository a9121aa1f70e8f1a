import sys

from adan.experiments.cli import main

sys.exit(main())
