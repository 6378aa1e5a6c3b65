"""Adapters from the domain to Redis: clients from a URL, and the outcome event stream.

They are here rather than in ``worker`` because producers (the client flow engines
import) read the same stream the workers write.
"""
