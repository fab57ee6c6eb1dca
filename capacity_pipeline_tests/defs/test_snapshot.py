"""What operators see of the code location does not change by accident: asset keys, groups,
partitions, dependencies, checks, automation, jobs and their selections, schedules and sensors.
The definitions are built from the default settings, whatever the shell's environment. After a
deliberate change, regenerate the snapshot from the repository root:

    .venv/bin/python -m capacity_pipeline_tests.defs.code_location_snapshot \
        > capacity_pipeline_tests/defs/code_location_snapshot.json
"""

from __future__ import annotations

import json
from pathlib import Path

from capacity_pipeline.defs.definitions import build_defs
from capacity_pipeline_tests.defs.code_location_snapshot import describe
from capacity_pipeline_tests.support import TEST_SETTINGS

SNAPSHOT = Path(__file__).with_name("code_location_snapshot.json")


def test_the_code_location_matches_its_snapshot():
    assert describe(build_defs(TEST_SETTINGS)) == json.loads(SNAPSHOT.read_text())
