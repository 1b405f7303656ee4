"""Benchmarks of the annotator (not imported by the library: ``annotator annotate`` never loads them).

The ``annotator bench`` comparison with Ultralytics' ``auto_annotate`` (also ``python -m benchmarks``):

* :mod:`benchmarks.bench_cli`: its command line;
* :mod:`benchmarks.versus_ultralytics`: the run (warm-up, alternating timed repeats) and the report;
* :mod:`benchmarks.contenders`: the two pipelines, built once and run on a folder;
* :mod:`benchmarks.ground_truth`: synthetic images with their truth, stub detectors, ground-truth masks;
* :mod:`benchmarks.timers`: stage clocks, peak memory, the device.

Stand-alone scripts (``python benchmarks/NAME.py --help``): ``engines`` (local vs Ray engine),
``polygon_fidelity``, ``profile_encoder``, ``segmenter_modes``, ``upsample_masks``.
"""
