"""The commands' argument parser: argparse's, with a mistake said in one line.

argparse answers a mistyped option with its whole usage block and a last line of its own
form; the lab's commands answer every mistake the same way: one line starting with
``error:``, naming the option and what it takes, and exit status 2. The usage stays with
``--help``, which the line points to.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (the options: {self.prog} --help)\n")
