"""Reports and plots built only from run folders."""
