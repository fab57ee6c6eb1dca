"""What operators see of the code location does not change by accident: asset keys, groups,
partitions, dependencies, checks, automation, jobs and their selections, schedules and sensors.
After a deliberate change, regenerate the snapshot from the repository root, with
CAPACITY_AUTOMATION, CAPACITY_PARTITIONS_START and CAPACITY_OBSERVE_MINUTES unset (they change the
sensor's default status, the partitions' start and the observation schedule's cron):

    env -u CAPACITY_AUTOMATION -u CAPACITY_PARTITIONS_START -u CAPACITY_OBSERVE_MINUTES \
        .venv/bin/python -m capacity_pipeline_tests.defs.code_location_snapshot \
        > capacity_pipeline_tests/defs/code_location_snapshot.json
"""

from __future__ import annotations

import json
from pathlib import Path

from capacity_pipeline.defs import defs
from capacity_pipeline_tests.defs.code_location_snapshot import describe

SNAPSHOT = Path(__file__).with_name("code_location_snapshot.json")


def test_the_code_location_matches_its_snapshot():
    assert describe(defs) == json.loads(SNAPSHOT.read_text())
