"""Running the real server for tests and benchmarks: neither imports the other."""
