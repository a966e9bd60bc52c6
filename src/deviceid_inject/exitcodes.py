"""The exit codes of the operator's commands (cli.py and the bridge's process), in a module of
their own so that both can use them without importing each other.

0 success (device found, config valid), 1 the answer is no (no device, config invalid),
2 usage or unreadable input.
"""

EXIT_OK, EXIT_NO, EXIT_USAGE = 0, 1, 2
