"""Executors: where a plan's jobs run. Each has the same face for the CLI:

    executor = Executor(cfg, run_dir)
    executor.execute(jobs, on_start, on_done) -> rows   (one row per job, same shape everywhere)
    executor.stop(reason)                                (from a signal handler: kill what runs)
    executor.stopped / executor.interrupted / executor.children.kill_all()

`local` runs worker processes on this machine (pipeline.executors.local); `ray` runs each job as
a Ray task on a cluster (pipeline.executors.ray, needs `pip install -e '.[ray]'`).
"""

EXECUTORS = ("local", "ray")
