"""The project's error hierarchy.

Every error a user can cause (a bad file, key, option or bundle) is a ``DeployError``. Messages
name the file, key or node, say what was expected and what was found, and how to fix it. The CLI
prints the message and exits with code 1, without a traceback.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base class of every user-facing error of spikegpt-deploy."""


class CheckpointError(DeployError):
    """A model file cannot be read as a SpikeGPT checkpoint."""


class DataError(DeployError):
    """A text corpus or prompt cannot be used (missing file, unknown characters, ...)."""


class ProfileError(DeployError):
    """A hardware profile file is malformed or incomplete."""


class ConversionError(DeployError):
    """The model graph cannot be captured, transformed or placed on the target."""


class BundleError(DeployError):
    """A deployment bundle is missing, unreadable, tampered with or of another format version."""


class SimulationError(DeployError):
    """The simulator failed while running a bundle."""
