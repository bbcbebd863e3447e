"""Bridges (layer 4): the weight layouts of the reference libraries.

One module per library family: the course's from-scratch modules (lecture layer) <-> open_clip,
transformers and diffusers state dicts and configs, for the parity tests and for shipping the
course models in the libraries' own formats. Imports the lecture layer, the world and the
infrastructure; never the recipes.
"""
