"""Built-in trackers, registered in the `experiment_tracker` entry-point group."""
