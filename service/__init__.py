"""The commands of ``run_system.py``: the demo, ``serve`` on an actor system, ``serve --distributed`` on Redis,
and the command line that chooses between them."""
