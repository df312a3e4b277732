import sys

from relscope.cli import main

sys.exit(main())
