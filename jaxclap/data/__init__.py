"""data package of jaxclap."""
