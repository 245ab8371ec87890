"""The real-time quote path (DESIGN section 6): feed -> decode -> book and microstructure -> Redis."""
