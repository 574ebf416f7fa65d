"""torchchat-native: the Python workshop around the native llama runners."""
