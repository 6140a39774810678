import sys

from galaxyvit.cli import main

sys.exit(main())
