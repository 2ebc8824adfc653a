"""The main job (`attnbench run`): a table of stages, each writing its part of the run directory."""
