"""Layer 7: the ``ffaccel`` command."""
