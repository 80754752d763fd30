"""Helpers shared by the test suite: services, worlds of test data, worker processes, waiting."""
