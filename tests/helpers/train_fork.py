"""Train inside a fork-started multiprocessing.Process (as sweep launchers and some trainers
do): tests/test_tracking_processes.py. The child exits cleanly (exit code 0) when its target
returns, through os._exit, after multiprocessing's and threading's exit hooks. Prints
{"event": "init", "id": ...} from the child.

Usage: train_fork.py
"""

import json
import multiprocessing
import sys

import replicate


def train() -> None:
    experiment = replicate.init(path=None, params={"start_method": "fork"})
    print(json.dumps({"event": "init", "id": experiment.id}), flush=True)
    experiment.checkpoint(metrics={"loss": 1.0})


if __name__ == "__main__":
    process = multiprocessing.get_context("fork").Process(target=train)
    process.start()
    process.join()
    sys.exit(process.exitcode)
