"""Small parts every layer uses: errors and a bug as one line, bounded text for messages, stopping on
Ctrl-C/SIGTERM, stderr kept for our own lines, the caption bar drawn on images and frames."""
