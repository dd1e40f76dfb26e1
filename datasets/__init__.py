"""Safe decoding, the brand registry, training-set and listing-dump readers, and the synthetic listing generator."""
