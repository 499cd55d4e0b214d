"""The error contract of every command: a user mistake is one ``error: <line>`` on stderr and
exit status 2 (the run's train.log gets the line too)."""

from __future__ import annotations

import logging
import os
import sys

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

from bitlm.core.errors import BitLMError
from bitlm.training.callbacks.progress import log_to_files

log = logging.getLogger("bitlm.app.hydra")


def fail(message: str) -> None:
    """``error: message`` on stderr and in the run's log (if one is open); exit status 2."""
    line = f"error: {message}"
    log_to_files(log, logging.ERROR, line)
    print(line, file=sys.stderr, flush=True)
    sys.exit(2)


def one_line(err: BaseException) -> str:
    """``err``'s whole message on one line: its lines joined by ``; `` (a space after a full
    stop), the list under a heading that ends in ``:`` (Hydra's ``Available options in
    'logger':``) by ``, ``; without Hydra's ``Config search path:`` block (where it looked,
    not what is wrong)."""
    parts: list[str] = []
    listing = False
    for raw in str(err).split("\nConfig search path:")[0].splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw[0].isspace() and parts and (listing or parts[-1].endswith(":")):
            parts[-1] += (", " if listing else " ") + line
            listing = True
        else:
            parts.append(line)
            listing = False
    if not parts:
        return type(err).__name__
    return "".join(p + (" " if p.endswith(".") else "; ") for p in parts[:-1]) + parts[-1]


def user_error(err: BaseException) -> BaseException | None:
    """The ``BitLMError`` (or config error) behind ``err``, if any: Hydra's ``instantiate``
    wraps exceptions raised in constructors, so follow the ``raise … from`` chain. A value a
    library's constructor refuses (Lightning's ``MisconfigurationException``, a ``TypeError``
    or ``ValueError`` from the call ``instantiate`` made) is the user's too, named by its key.
    ``HYDRA_FULL_ERROR=1`` keeps the traceback of those."""
    while err is not None:
        if isinstance(err, (BitLMError, OmegaConfBaseException)):
            return err
        cause = err.__cause__
        refused = isinstance(cause, (MisconfigurationException, TypeError, ValueError))
        if isinstance(err, InstantiationException) and refused and not _full_errors():
            key = str(err).rpartition("full_key: ")[2].strip() or "config"
            return BitLMError(f"{key}: {one_line(cause)}")
        err = cause
    return None


def _full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
