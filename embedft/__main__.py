import sys

from embedft.cli import main

sys.exit(main())
