"""Calibration: from a folder of photographs or a video to a calibrated dataset (pycolmap).

sources.py lists and reads the inputs (photographs incl. HEIC, video frames), sfm.py runs COLMAP's
features, matching and mapping with progress and cancel, region.py finds the object in the sparse
points, dataset.py writes the dataset, run.py ties them for `python -m engine calibrate`.
"""
