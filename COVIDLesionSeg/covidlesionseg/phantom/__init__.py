"""Generated chest CT with exact truth (lesions, lungs, lobes) for tests, the demo, benchmarks and training.

One case is made by ``generate.generate_phantom``; the parts it is built from: ``anatomy`` (the chest's
surfaces and lobes), ``tubes`` (great vessels, central airways, ribs), ``trees`` (airway and vessel trees),
``lesions`` (COVID-19 patterns per CT category), ``grid`` (the scanner's sampling grid) and ``paint``
(voxelising at voxel centres).
"""

from covidlesionseg.phantom.generate import (
    GENERATOR_VERSION,
    MAX_VOXELS,
    Phantom,
    choose_grid,
    clear_caches,
    default_grid,
    generate_phantom,
    landmarks,
    save_phantom,
    truth_severity,
)

__all__ = [
    "GENERATOR_VERSION",
    "MAX_VOXELS",
    "Phantom",
    "choose_grid",
    "clear_caches",
    "default_grid",
    "generate_phantom",
    "landmarks",
    "save_phantom",
    "truth_severity",
]
