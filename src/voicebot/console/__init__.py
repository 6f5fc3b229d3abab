"""The conversation console: every device's conversation live in a browser (``voicebot console``)."""
