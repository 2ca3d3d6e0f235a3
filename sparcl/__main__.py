import sys

from sparcl.entry import main

sys.exit(main())
