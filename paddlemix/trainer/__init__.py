"""Fine-tuning: data preparation, datasets and the training loop for Emu3."""
