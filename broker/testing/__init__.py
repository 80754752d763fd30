"""Test support shipped with the broker: a scriptable fake connector and the connector contract suite."""
