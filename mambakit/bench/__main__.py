"""``python -m mambakit.bench …`` = ``mambakit bench …`` (needs only the core's dependencies)."""
import argparse
import sys

from mambakit.bench.commands import register
from mambakit.cli import run_command

parser = argparse.ArgumentParser(prog="python -m mambakit.bench")
register(parser.add_subparsers(dest="command", required=True))
sys.exit(run_command(parser, ["bench", *sys.argv[1:]]))
