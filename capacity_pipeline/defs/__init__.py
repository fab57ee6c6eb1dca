"""The Dagster code location: workspace.yaml loads `defs`.

`defs` is a loader: Dagster calls it when it loads the location, and only then are the settings
read from the environment (once) and the definitions built from them (definitions.py). Importing
any module of this package reads nothing and builds nothing.
"""

import dagster as dg

from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline.settings import Settings


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs(Settings.from_env())
