"""The command-line layer, on top of the library: options (argparse) and the one wrapper that turns the library's
errors into a one-line message and an exit code. The library below never imports it."""
from ppt_cli.main import run_tool

__all__ = ["run_tool"]
