"""Inside Triton's Python stubs: copied whole into each model folder that runs Python; never imports the build side."""
