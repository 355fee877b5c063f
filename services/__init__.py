"""Deployable example services for vgi-flight.

Each module holds one Protocol and one implementation constructible without arguments, so it can be
served with ``vgi-flight serve services.<module>:<Implementation>``. See ``services/README.md``.
"""
