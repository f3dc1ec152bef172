"""Datasets: manifests of nnU-Net / MSD folders, label -> taxonomy maps, caching, sampling, phantoms.

Submodules are imported explicitly (e.g. `from promptseg.data.phantoms import make_phantom_datasets`)
so that importing this package stays cheap.
"""
