"""Loaded at start-up in the LeRobot virtualenv only (`make lerobot-venv` installs it with a .pth).

PyPI's torchvision wheels are built against the CUDA build of torch, so their C ops cannot load
beside the CPU torch that the LeRobot virtualenv borrows from .venv, and torchvision's import then
fails while registering fake and autograd kernels for those ops. LeRobot's dataset, statistics and
ACT/Diffusion code that the check runs never calls a torchvision op (no images, no ResNet), so only
those two registration modules are skipped; every other torchvision module imports as shipped.
"""

import sys
import types

for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
