"""The 13 canonical intermediate states of a transformer block."""
