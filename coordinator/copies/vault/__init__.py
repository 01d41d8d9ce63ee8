"""The restoration window (SPEC §12): deleted rows sealed for a while, and put back."""
