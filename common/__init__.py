"""eva02.common: what the tools, both frameworks and pre-training share that is not the encoder (torch and numpy,
plus tensorboard and supervision where named): the command-line convention (cli), numeric precision names
(precision), atomic file writes (files), random-generator state (rng), the generated shapes behind every demo
(shapes), class-row re-laying for heads (class_rows), the memory planner's tracer (memory) and the upstream
functions it patches (upstream), a run's TensorBoard events read back as curves.png and W&B mirroring (runlog,
tensorboard), own data in the formats annotation tools write, converted to COCO (formats, supervision)."""
