"""Runs a plan for real with PyTorch's own parallel building blocks (torchtitan's layout).

model.py (pure nn model from a ModelSpec) · parallel_dims.py (degrees, DeviceMesh from the placement) ·
tensor_parallel.py · pipeline_parallel.py · data_parallel.py · expert_parallel.py ·
activation_checkpoint.py · trainer.py (composition, one optimizer step) · data.py · measure.py ·
run.py (torchrun entry point) · launch.py (`planner run`, `run_plan`).
"""
