"""Video annotation: streamed decoding, detector keyframes, SAM 2 memory tracking, per-frame labels with track ids."""
