"""audio package of jaxclap."""
