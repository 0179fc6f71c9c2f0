"""The ``fedxai`` command: every service behind one entry point, and ``fedxai run``,
which starts them all on one machine."""
