import sys

from hemorrhage.cli import main

sys.exit(main())
