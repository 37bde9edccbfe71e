"""The command line: argparse and one module per command. Nothing outside this package imports it."""
