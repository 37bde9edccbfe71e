import sys

from prunenas.cli.main import main

sys.exit(main())
