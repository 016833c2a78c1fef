"""A server process's life: start-up checks and tuning (startup, gc_policy, body_limit),
admission of receivers, several workers on one port (reuseport), and the drain on SIGTERM."""
