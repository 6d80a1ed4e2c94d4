import sys

from fishflow.cli import main

sys.exit(main())
