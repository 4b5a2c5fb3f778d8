"""One reset of accelerate's process-wide state, shared by the scale tests (each test builds its
own Accelerator; a leftover state from the previous test would configure the next one)."""

from __future__ import annotations


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
