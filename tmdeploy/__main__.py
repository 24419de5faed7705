import sys

from tmdeploy.cli import main

sys.exit(main())
