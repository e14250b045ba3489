"""Structured output: a regex, a choice of strings or a JSON schema, compiled on the host into a token automaton
(`automaton.py`) and applied on the device inside the decode loop (`device.py`); what a call may ask for is
`spec.py`'s."""
