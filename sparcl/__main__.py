import sys

from sparcl.cli import main

sys.exit(main())
