"""The TensorFlow-free core: pixels, metrics, image sources, splits, the manifest and format table, run folders and the recipe.

Everything here runs on the edge install; nothing imports TensorFlow.
"""
