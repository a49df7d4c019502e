"""Fault-injection tests: pools against a network and servers that misbehave."""
