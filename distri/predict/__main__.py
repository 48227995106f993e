import sys

from distri.predict.cli import main

sys.exit(main())
