import sys

from nstjax.cli import main

sys.exit(main())
