"""The bodies of the ``ohem`` commands, one module per command or pair (the parser is ``ohem.cli``)."""
