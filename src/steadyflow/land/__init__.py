"""land stage."""
