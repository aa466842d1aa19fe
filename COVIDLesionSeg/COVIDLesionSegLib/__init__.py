"""MRML glue of the COVIDLesionSeg module (imports slicer; the maths lives in covidlesionseg)."""
