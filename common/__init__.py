"""eva02.common: what the tools, both frameworks and pre-training share that is not the encoder (needs only torch
and numpy): the command-line convention (cli), numeric precision names (precision), atomic file writes (files),
random-generator state (rng), the generated shapes behind every demo (shapes), class-row re-laying for heads
(class_rows), the memory planner's tracer (memory) and the upstream functions it patches (upstream)."""
