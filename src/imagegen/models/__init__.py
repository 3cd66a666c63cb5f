"""Find and load what a recipe needs: model files (sources), shared components, LoRAs, schedulers, devices."""
