"""`make rehearse`: the paper presets end to end at their real shapes on stand-in data (__main__.py).

    standins.py  stand-in datasets in their official layouts, and stand-in torchvision weight files
    presets.py   the presets rehearsed and the counts shrunk for each
    estimate.py  each stage's units and FLOPs from a composed config (the full-run extrapolation)
"""
