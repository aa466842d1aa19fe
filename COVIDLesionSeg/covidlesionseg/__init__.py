"""COVIDLesionSeg core: COVID-19 pulmonary infiltrate segmentation and lobe-wise severity scores.

This package never imports ``slicer``; the 3D Slicer module and the command line both build on it.
"""

__version__ = "0.1.0"
SOFTWARE_NAME = "COVIDLesionSeg"
