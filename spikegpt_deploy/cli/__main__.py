"""``python -m spikegpt_deploy.cli``."""

from . import main

main()
