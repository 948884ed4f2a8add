"""``python -m coalition_server`` is ``coalition-server``."""

from coalition_server.cli import main

main()
