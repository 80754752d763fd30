"""Connector plugins: each sub-package drives one kind of backend behind `broker.connector.Connector`."""
