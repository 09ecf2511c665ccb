"""`python -m pipeline [+sweep=NAME] [mode=run|plan|validate|explain|gc] [overrides...]`

Exit codes: 0 all good, 1 some job failed, 2 bad config or usage (see README's CLI contract).

Hydra composes the config before our code runs. Its errors (unknown groups, bad overrides,
YAML syntax or encoding errors in a config file) are usage errors: exit 2, with one line for
a broken YAML file (file, line, column, problem) instead of Hydra's traceback. Hydra is made
to raise its composition errors to `entry()` (HYDRA_FULL_ERROR=1 for the composition only),
so the user's HYDRA_FULL_ERROR changes how much is printed, never the exit code.
"""

from __future__ import annotations

import os
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import modes
from pipeline.cli.console import err
from pipeline.config_files import config_file_problem

_entered = False
_FULL_ERROR = "HYDRA_FULL_ERROR"
_user_full_error: str | None = os.environ.get(_FULL_ERROR)


def _restore_full_error() -> None:
    """Give the user's HYDRA_FULL_ERROR back (our code's own errors follow their choice)."""
    if _user_full_error is None:
        os.environ.pop(_FULL_ERROR, None)
    else:
        os.environ[_FULL_ERROR] = _user_full_error


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    global _entered
    _entered = True
    _restore_full_error()
    choice = HydraConfig.get().runtime.choices.get("model")
    code = modes.dispatch(OmegaConf.to_container(cfg, resolve=True), choice)
    if code:
        sys.exit(code)


def _composition_error(exc: BaseException) -> None:
    """Report an error raised while Hydra composed the config (before our code ran)."""
    line = config_file_problem(exc)
    if line is not None:
        err.print(f"config error: {line}", markup=False, soft_wrap=True)
        return
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if _user_full_error == "1":
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    elif isinstance(exc, CompactHydraException):  # what Hydra itself prints for these
        err.print(str(exc), markup=False, soft_wrap=True)
        if isinstance(exc.__cause__, OmegaConfBaseException):
            err.print(str(exc.__cause__), markup=False, soft_wrap=True)
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        err.print(f"config error: {type(exc).__name__}: {first}", markup=False, soft_wrap=True)
        err.print(f"Set the environment variable {_FULL_ERROR}=1 for a complete stack trace.", markup=False)


def entry() -> None:
    os.environ[_FULL_ERROR] = "1"  # composition errors reach us as exceptions (see the module doc)
    try:
        main()
    except SystemExit as e:
        # Hydra exits 1 on composition/override errors before our code runs: that is usage.
        if not _entered and e.code not in (0, None):
            sys.exit(2)
        raise
    except Exception as e:
        if _entered:
            raise
        _composition_error(e)
        sys.exit(2)
    finally:
        _restore_full_error()


if __name__ == "__main__":
    entry()
