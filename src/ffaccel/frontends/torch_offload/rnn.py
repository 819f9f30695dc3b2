"""Recurrent layers (placeholder)."""
def handlers():
    return {}
