"""Dataset formats: pure converters from :class:`~annotator.records.PolygonInstance` to file contents, beside
thin atomic writers. One module per format: :mod:`annotator.formats.yolo`, :mod:`annotator.formats.coco`.
"""
