"""train package of jaxclap."""
