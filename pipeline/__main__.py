"""`python -m pipeline [+sweep=NAME] [mode=run|plan|validate|explain|gc] [overrides...]`

Exit codes: 0 all good, 1 some job failed, 2 bad config or usage (see README's CLI contract).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import modes

_entered = False


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    global _entered
    _entered = True
    choice = HydraConfig.get().runtime.choices.get("model")
    code = modes.dispatch(OmegaConf.to_container(cfg, resolve=True), choice)
    if code:
        sys.exit(code)


def entry() -> None:
    try:
        main()
    except SystemExit as e:
        # Hydra exits 1 on composition/override errors before our code runs: that is usage.
        if not _entered and e.code not in (0, None):
            sys.exit(2)
        raise


if __name__ == "__main__":
    entry()
