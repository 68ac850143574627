import sys

from clipsonic.cli import main

sys.exit(main())
