"""The course's world (layer 3): the data every chapter trains and tests on.

- ``shapes``: Shapes World scenes, captions, QA, splits and the caption / QA datasets (notebook 00);
- ``data``: the shipped photographs and scikit-learn's hand-written digits;
- ``toys``: the 2-D toy data sets of notebook 08 (moons, swiss roll, ...);
- ``instruct``: LLaVA-style instruction data grounded in a scene's truth, and its fact checker (notebook 02);
- ``text``: tokenizers over the course's own text (CLIP BPE restricted to Shapes World, word-level
  Llama vocabulary) and the text augmentation the course models train with.

Imports the lecture layer and the infrastructure, never the bridges or recipes above it.
"""
