"""rtu-edge: Recurrent Trace Units with exact RTRL, trained on a workstation and learning on the robot.

This package is the torch side (cells, learners, training). Importing it does not import torch;
its submodules do.
"""

__version__ = "0.1.0"
