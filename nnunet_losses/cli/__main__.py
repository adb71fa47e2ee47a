"""``python -m nnunet_losses.cli`` = the ``nnunet-losses`` console command."""
import sys

from nnunet_losses.cli import main

sys.exit(main())
