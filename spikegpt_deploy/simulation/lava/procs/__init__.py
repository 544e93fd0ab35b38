"""Custom Lava Processes and their ProcessModels, one side-effect-free module each.

Lava's compiler executes every ``.py`` file in the directory of a Process class's module when it
looks for ProcessModels, so this package holds nothing else: no scripts, no heavy imports, no
work at import time. This ``__init__`` imports nothing, so importing the package does not import
Lava; import the modules (``sources``, ``sinks``, ``faults``) where a network is built.
"""
