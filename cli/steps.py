"""The registry of steps, assembled from what each step's package declares (``components/<step>/__init__.py``)."""

from spectrain.components import evaluate, export, regenerate, register, serve, train_heads
from spectrain.steps import Step

STEPS: dict[str, Step] = {
    step.name: step
    for package in (serve, regenerate, train_heads, evaluate, export, register)
    for step in package.STEPS
}
