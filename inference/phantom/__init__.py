"""Synthetic chest CT with known nodules (rename step: the code still sits in anatomy.py until the split)."""
from inference.phantom.anatomy import (  # noqa: F401
    PhantomCase,
    Phantom,
    PhantomNodule,
    _sample_nodule_spec,
    insert_nodules,
    make_phantom,
    paint_nodule,
    write_phantom_series,
)
