"""``python -m mambakit.compat [--force] script.py args…`` (or ``-m module args…``): run unmodified mamba_ssm code.

The import shim is installed first, then the script (or module) runs as ``__main__`` with ``sys.argv`` as it
would see it, e.g. ``python -m mambakit.compat -m lm_eval --model mamba_ssm --model_args pretrained=DIR …``.
``--force`` shadows a real mamba_ssm / causal_conv1d too. mambakit's user errors print one line
(``MAMBAKIT_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import os
import runpy
import sys

from mambakit.compat.errors import CompatError
from mambakit.compat.shim import install
from mambakit.errors import UserError

USAGE = "usage: python -m mambakit.compat [--force] (script.py | -m module) [args ...]"


def main(argv: list[str]) -> None:
    force = argv[:1] == ["--force"]
    argv = argv[1:] if force else argv
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__.strip()}")
        sys.exit(0 if argv else 2)
    install(force=force)
    if argv[0] == "-m":
        if len(argv) < 2:
            raise CompatError(f"-m needs a module name; {USAGE}")
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    if not os.path.isfile(argv[0]):
        raise CompatError(f"no script at {argv[0]}; {USAGE}")
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python script.py` sets it
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as exc:
        if os.environ.get("MAMBAKIT_DEBUG"):
            raise
        print(f"mambakit.compat: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
