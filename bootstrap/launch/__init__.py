"""Processes the job starts and supervises, and what they read and write.

Below the stages, above planning: it knows how a child is started so that it stops with us,
hears our stop signals and tells us how it ended, but not what training or evaluation do.

- signals.py: SIGTERM/SIGINT to one handler; children that die with their parent.
- environment.py: the environment every child gets (our code importable, NVLink multicast off).
- child.py: one supervised child (the stage processes of `run`).
- accelerate.py, ranks.py, supervisor.py: a multi-process training launch: the config
  `accelerate launch` reads, the job and outcome files of the ranks, and the supervision.
- vllm_server.py: TRL's vLLM server on a GPU of its own.
"""
