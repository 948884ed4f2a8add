"""``coalition demo``: a whole coalition played end to end against a real, local server.

:mod:`coalition.demo.scenario` plays it (it needs the ``server`` extra), :mod:`.results`
holds what it found, :mod:`.summary` prints it, :mod:`.report` writes the HTML report with
:mod:`.svg`'s charts, and :mod:`.command` is the CLI command. ``coalition`` itself imports
only the command, which imports the rest when it runs, so the client keeps working without
the server's dependencies.
"""
