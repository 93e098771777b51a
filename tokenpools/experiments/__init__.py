"""Experiments that run several services together (the admitter, the emulator, the pipeline, the
scaler and the load generator) and compare what they measure.

They sit above the services in the layering (see pyproject's ``[tool.importlinter]``): each
service stays ignorant of the others, and only these orchestrations, like the CLI, combine them.
The simulated-time experiments, which need only the simulator, stay in ``sim.experiments``.
"""
