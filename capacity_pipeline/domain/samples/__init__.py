"""WhaleFall's inputs: active instances, the size samples' data versions, synthetic samples."""
