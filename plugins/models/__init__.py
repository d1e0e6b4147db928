"""Model adapters: Hugging Face transformer families."""
