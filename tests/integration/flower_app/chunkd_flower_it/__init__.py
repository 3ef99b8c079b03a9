"""A Flower App for chunkd's integration test: checkpoints written as Flower users write them."""
