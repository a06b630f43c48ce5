import sys

from recneg.cli import main

sys.exit(main())
