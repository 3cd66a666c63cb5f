"""What the text encoder reads: the prompt's LoRA tags taken out (and, later, weighting and embeddings)."""
