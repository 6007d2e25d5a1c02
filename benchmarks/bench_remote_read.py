"""Reading a whole checkpointed file straight from a remote (what ``checkout -R`` and
``iter_content`` do), against a loopback S3 server (moto, started as in bench_remote.py):

- replicate, coalesced: chunks requested ~8 MiB at a time, neighbours fetched in one range
  request (``objects.reader.READ_AHEAD``);
- replicate, one range request per chunk (READ_AHEAD set to 1 byte: the previous behaviour);
- replicate, ``Checkpoint.open()`` read through in 1 MiB reads (FileReader: sequential reads
  fetch ahead in doubling windows of chunks, up to READ_AHEAD bytes);
- baseline: s3fs ``get_file`` of the same file uploaded as one object.

Alternating, after a warm-up round; medians of ``--runs``. Every replicate read verifies every
chunk's hash. Nothing is written to disk (the bytes are only counted).

    .venv/bin/python benchmarks/bench_remote_read.py [--size-mib 256] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_remote as br  # noqa: E402  (sets the AWS environment before boto/s3fs load)

MiB = br.MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from replicate import history, sync
    from replicate.checkout import find_entry
    from replicate.objects import reader
    from replicate.repository import Repository

    proc, endpoint = br.start_moto()
    work = Path(tempfile.mkdtemp(prefix="bench-remote-read-"))
    try:
        repo_root, model = br.checkpoint_project(work / "project", args.size_mib * MiB)
        repo = Repository.open(repo_root)
        bucket = br.new_bucket(endpoint)
        url = f"s3://{bucket}/repo"
        fs = br.s3fs_fs(endpoint)
        fs.put_file(str(model), f"{bucket}/baseline/model.bin")
        sync.push(repo, sync.open_remote_repo(repo, url))
        (eid,) = history.experiment_ids(repo)
        cp_id = repo.refs.read(repo.experiment_ref(eid))
        assert cp_id is not None
        times: dict[str, list[float]] = {
            "coalesced": [],
            "per chunk": [],
            "open() read through": [],
            "s3fs get": [],
        }
        requests: dict[str, int] = {}
        ahead = reader.READ_AHEAD
        for run in range(args.runs + 1):
            for mode in times:
                if mode == "s3fs get":
                    copy = work / "copy.bin"
                    t = time.perf_counter()
                    fs.get_file(f"{bucket}/baseline/model.bin", str(copy))
                    dt = time.perf_counter() - t
                    copy.unlink()
                else:
                    cache = work / f"cache-{run}-{mode.replace(' ', '')}"
                    rrepo, counter = br.counted_remote_repo(url, cache)
                    rrepo.objects.refresh()
                    cp = rrepo.objects.read_object(cp_id)
                    file = rrepo.objects.read_object(
                        find_entry(rrepo.objects, cp.files, "model.bin").id
                    )
                    reader.READ_AHEAD = 1 if mode == "per chunk" else ahead
                    before = counter.counts.get("get_range", 0)
                    t = time.perf_counter()
                    if mode == "open() read through":
                        n = 0
                        with reader.open_file(rrepo.objects, file) as fh:
                            while block := fh.read(MiB):
                                n += len(block)
                    else:
                        n = sum(len(b) for b in reader.iter_content(rrepo.objects, file))
                    dt = time.perf_counter() - t
                    reader.READ_AHEAD = ahead
                    assert n == args.size_mib * MiB
                    requests[mode] = counter.counts.get("get_range", 0) - before
                    rrepo.close()
                    shutil.rmtree(cache, ignore_errors=True)
                if run:
                    times[mode].append(dt)
            if run:
                print(
                    f"  run {run}: " + ", ".join(f"{m} {v[-1]:.2f} s" for m, v in times.items()),
                    file=sys.stderr,
                )
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    base = med(times["s3fs get"])
    print(f"\nread {args.size_mib} MiB from S3 (moto on loopback), medians of {args.runs}:\n")
    print("| reader | time | MB/s | range requests | vs s3fs get |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, ts in times.items():
        m = med(ts)
        reqs = requests.get(mode, 1)
        print(
            f"| {mode} | {m:.2f} s | {args.size_mib * MiB / m / 1e6:.0f} | {reqs} | "
            f"{base / m:.2f}x |"
        )


if __name__ == "__main__":
    main()
