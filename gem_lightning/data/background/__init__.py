"""Background removal: the rembg and GrabCut backends, the content-keyed cache of cut-outs they fill, and the
background swap used as augmentation.

Imports ``files``, ``machine``, ``choices`` and ``data.image_files``; ``data`` and ``inference`` import it.
"""
