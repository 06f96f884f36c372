import sys

from numpymnv2.cli import main

sys.exit(main())
