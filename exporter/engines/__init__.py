"""Engine-specific names mapped onto the daemon's stable schema."""
