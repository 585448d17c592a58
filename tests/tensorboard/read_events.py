"""Reads a TensorBoard log directory with TensorBoard's own reader (EventAccumulator, the
loader behind `tensorboard --logdir`, which checks every record's checksums) and prints what
it found as JSON:

    {"file_version": 2.0,
     "scalars": {"train/loss": [{"step": 1, "wall_time": 1700000000.0, "value": 0.69}, ...]}}

Usage: python read_events.py LOG_DIR
Run by tests/e2e/tensorboard.rs (scripts/tensorboard-test.sh gives it a venv with
tensorboard installed).
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: read_events.py LOG_DIR")
    # 0 keeps every scalar (the default samples 10,000 per tag).
    accumulator = event_accumulator.EventAccumulator(
        sys.argv[1], size_guidance={event_accumulator.SCALARS: 0}
    )
    accumulator.Reload()
    scalars = {
        tag: [
            {"step": point.step, "wall_time": point.wall_time, "value": point.value}
            for point in accumulator.Scalars(tag)
        ]
        for tag in accumulator.Tags()[event_accumulator.SCALARS]
    }
    print(json.dumps({"file_version": accumulator.file_version, "scalars": scalars}))


if __name__ == "__main__":
    main()
