"""The pipeline code diffusers lacks: Stable Cascade's two calls, class-conditional DiT, ControlNet control maps."""
