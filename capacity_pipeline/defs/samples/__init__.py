"""WhaleFall's samples in the asset graph: observable sources and their observation."""
