"""Phase-shifting interferometry: forward model, synthetic wafers, classical baseline."""
