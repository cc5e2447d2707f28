"""Worker applications that tests start in real child processes."""
