import sys

from prunenas.cli import main

sys.exit(main())
