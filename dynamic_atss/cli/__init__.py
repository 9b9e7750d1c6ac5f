"""One module per command, each with `main(argv) -> int`; argparse lives only here."""
