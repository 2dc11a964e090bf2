"""Command-line front end: ``vpnid SUBCOMMAND ...`` (see ``vpnid --help``)."""
