"""Everything that imports Lava: the supervised runner (``runner``), the builders of the two
networks (``network`` for the per-population one, ``procs.chip_core`` for the pipelined one) and
the custom Processes with their ProcessModels (``procs``).

Nothing here imports Lava at package import time: ``runner`` imports it in its forked child,
the builders and ``procs`` when a network is built. No module outside this package imports Lava.
"""
