"""Headless RayFlow distillation: ``python -m training.distill`` (README, "Training")."""

import logging


def _drop_bitsandbytes_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes (0.50) tries to fetch a 4-bit CPU matmul kernel from the Hugging Face hub when it
    is imported on CPUs with AVX-512 bf16, and logs a warning when it cannot; peft imports it
    whenever it is installed. The trainer uses no 4-bit layers, so that one notice is dropped."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_bitsandbytes_kernel_notice)
