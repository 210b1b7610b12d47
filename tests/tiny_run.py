"""The small ``training.distill`` run of issue 35's repros, on the ``tiny_sd15`` fixture (conftest.py)."""

TINY_FLAGS = ["--resolution", "16", "--teacher-steps", "2", "--batch-size", "2", "--lora-rank", "2", "--lora-alpha", "2",
              "--shard-size", "2", "--train-steps", "2", "--log-every", "1"]
