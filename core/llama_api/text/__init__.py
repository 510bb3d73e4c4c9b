"""Text handling shared by backends: chat templates, stop strings, reasoning, plain text."""
