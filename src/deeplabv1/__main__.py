import sys

from deeplabv1.cli import main

sys.exit(main())
