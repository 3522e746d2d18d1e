"""pyramid_txmail (being assembled)."""
