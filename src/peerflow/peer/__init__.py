"""The peer layer: run workflows on other machines over gRPC."""
