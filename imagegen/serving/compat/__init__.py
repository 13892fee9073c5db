"""Foreign APIs spoken over the native one: thin translators, no generation logic."""
