"""Auto-interpretation: the top activating windows of every SAE feature (phase 1), an LLM's label for each
feature from them (phase 2), and detection scoring of those labels."""
