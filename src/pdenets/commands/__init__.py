"""Subcommands of the ``pdenets`` command line (see :mod:`pdenets.cli`)."""
