"""VGG-like models the way users write them, one file per model, each with a ``make`` factory.

Loaded by file path (``tests/user_models/vgg_gap_head.py:make``) and by import string
(``vgg_gap_head:make`` with this folder on ``sys.path``). ``unsupported_*.py`` hold patterns
torch-pruning cannot follow, which tp-vgg must detect and explain.
"""
