"""The models imagegen ships and trains itself: the handwritten-digits DiT that runs offline."""
