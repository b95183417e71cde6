import sys

from spectrain.cli import main

sys.exit(main())
