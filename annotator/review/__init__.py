"""Review exports of a finished output folder (no model runs): Label Studio, CVAT, a static review page, and
the review queue (images ordered by how much they need a human look).

Every export starts from :func:`annotator.finished.open_finished` and writes into a destination folder.
"""
