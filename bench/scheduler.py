"""60 synthetic cells with known durations and per-cloud limits through the real Scheduler.

Prints the makespan divided by the ideal lower bound (target: 1.05 or less). The lower bound is
the largest of: all work over the global limit, each cloud's work over its limit, the longest cell.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagebuilder.build import Job, Limits, NoHooks, Outcome, Scheduler  # noqa: E402
from imagebuilder.planner import Cell  # noqa: E402

SCALE = 0.01  # one simulated minute of build time is 10 ms of wall time here
CLOUD_LIMITS = {"qemu": 1, "aws": 4, "gcp": 4, "openstack": 2, "azure": 3}
GLOBAL_LIMIT = 8
MINUTES = {"qemu": (8, 15), "aws": (12, 25), "gcp": (10, 20), "openstack": (8, 18), "azure": (20, 40)}


class QuietReporter:
    def update(self, jobs, event, job) -> None:
        return

    def close(self, jobs) -> None:
        return


def synthetic_jobs(count: int, seed: int = 7) -> list[Job]:
    rng = random.Random(seed)
    clouds = list(CLOUD_LIMITS)
    jobs = []
    for index in range(count):
        cloud = clouds[index % len(clouds)]
        low, high = MINUTES[cloud]
        minutes = rng.uniform(low, high)
        cell = Cell(id=f"{cloud}-synthetic-{index}", os="debian-12", kubernetes="1.31", kubernetes_version="1.31.0",
                    cloud=cloud, arch="amd64", strategy="bake", versions={}, pause_image="", downloads={},
                    settings={}, ansible_vars={}, base_image={}, image_name="")
        jobs.append(Job(cell=cell, directory=Path("/nonexistent"), estimate=minutes * 60))
    return jobs


def sleeping_executor(job: Job, cancel: threading.Event) -> Outcome:
    time.sleep(job.estimate / 60 * SCALE)
    return Outcome(ok=True)


def lower_bound(jobs: list[Job]) -> float:
    durations = [job.estimate / 60 * SCALE for job in jobs]
    per_cloud: dict[str, float] = defaultdict(float)
    for job, duration in zip(jobs, durations):
        per_cloud[job.cell.cloud] += duration
    return max(sum(durations) / GLOBAL_LIMIT, max(durations),
               *(work / CLOUD_LIMITS[cloud] for cloud, work in per_cloud.items()))


def main() -> None:
    jobs = synthetic_jobs(60)
    # The bench measures scheduling, not manifests: cells finish without one to read.
    scheduler = Scheduler(jobs, Limits(GLOBAL_LIMIT, CLOUD_LIMITS), sleeping_executor, NoHooks(), QuietReporter(),
                          collect=lambda job: None)
    start = time.perf_counter()
    scheduler.run()
    makespan = time.perf_counter() - start
    bound = lower_bound(jobs)
    print(f"scheduler: 60 cells, limits {GLOBAL_LIMIT} global {CLOUD_LIMITS}")
    print(f"makespan {makespan:.2f} s, lower bound {bound:.2f} s, ratio {makespan / bound:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
