"""Layer 9 (the top): the ``ffaccel`` command."""
