"""Recipes (layer 5): build, train, ship and judge each course model.

What ``scripts/train_*.py`` call (the scripts are thin command-line wrappers), what the notebooks
call to load a shipped checkpoint, and the judges that measure the models in the benchmark. The top
layer: may import everything below it, and nothing imports it but notebooks, scripts and tests.
"""
