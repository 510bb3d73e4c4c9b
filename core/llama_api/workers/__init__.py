"""Worker processes: the server's handle on one, the child's main loop, their protocol."""
